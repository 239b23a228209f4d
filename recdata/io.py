"""Atomic writes: a file or directory appears whole or not at all, so an interrupted run never
leaves a half-written checkpoint, SID table or report behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or malformed JSON is a DataError naming the file (and line)."""
    from mmq_rec.recdata.errors import DataError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text (save it as UTF-8 JSON)", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read it ({e.strerror or e})", path=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno) from None


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


MARKER = ".mmq-rec.json"
"""Written into every directory this project creates, so a later run knows it is ours (and what)."""


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of one of our output directories, or None for anything else."""
    try:
        info = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("kind"), str) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(path: str | Path) -> list[Path]:
    """Remove the temporary siblings (`.NAME.<pid>.*.tmp`, `.NAME.old-<pid>`) that a killed run
    left beside `path`; those of a process still alive are kept. An `.old` sibling whose output is
    missing (a kill between the two renames of `atomic_dir`) is put back instead. Returns the
    siblings it removed or restored."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for p in sorted(path.parent.iterdir()):
        if not p.name.startswith(prefix):
            continue
        parts = p.name[len(prefix):].split(".")
        pid = None
        # exactly `<pid>.<random>.tmp` (mkstemp/mkdtemp names have no dots) or `old-<pid>`, so a
        # sibling named `NAME.<digits>` is never taken for one of ours
        if len(parts) == 3 and parts[2] == "tmp" and parts[0].isdigit():
            pid = int(parts[0])
        elif len(parts) == 1 and parts[0].startswith("old-") and parts[0][4:].isdigit():
            pid = int(parts[0][4:])
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if parts[0].startswith("old-") and not path.exists():
            os.replace(p, path)  # killed between the two renames: the old output is the only copy
            removed.append(p)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def check_output(path: str | Path, kind: str, *, overwrite: bool = False,
                 inputs: tuple[str | Path | None, ...] = (), option: str = "output", replaces: bool = True) -> Path:
    """Refuse an output path that would destroy something that is not ours to replace.

    Allowed: a path that does not exist, an empty directory, a directory that an earlier run
    wrote for the same `kind` (recognised by its marker), and, with `overwrite`, any directory
    of ours. Never allowed: a file, a non-empty directory without our marker, or a path that is
    (or contains) one of `inputs`. `replaces`: the output will be replaced whole (`atomic_dir`),
    so other outputs of ours nested inside it need `overwrite` too; an output filled in place
    (`claim_dir`) keeps what it holds. Raises DataError naming the path and `option`."""
    from mmq_rec.recdata.errors import DataError

    path = Path(path)
    where = path.resolve()
    for inp in inputs:
        if inp is None:
            continue
        src = Path(inp).resolve()
        if where == src or where in src.parents:
            raise DataError(f"the output would replace the input {inp} (choose another --{option})",
                            path=path, field=option)
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir() or path.is_symlink():
        raise DataError(f"exists and is not a directory; refusing to replace it (choose another --{option})",
                        path=path, field=option)
    if not any(path.iterdir()):
        return path
    marker = read_marker(path)
    if marker is None:
        raise DataError(f"is a non-empty directory that MMQ-Rec did not write; refusing to touch it "
                        f"(choose a new or empty --{option})", path=path, field=option)
    if marker["kind"] != kind and not overwrite:
        raise DataError(f"holds an earlier MMQ-Rec output of another kind ({marker['kind']}), not a {kind}; "
                        f"pass --overwrite to replace it", path=path, field=option)
    if replaces and not overwrite:
        nested = [p.parent for p in path.rglob(MARKER) if p.parent != path]
        if nested:
            raise DataError(f"holds other MMQ-Rec outputs inside it ({nested[0]}) that replacing it would "
                            f"delete; move them, choose another --{option}, or pass --overwrite", path=path,
                            field=option)
    return path


def claim_dir(path: str | Path, kind: str, **check: Any) -> Path:
    """Check `path` as an output (see `check_output`) and mark it as ours, creating it if needed.
    For outputs that are filled in place over time (a training run directory)."""
    path = check_output(path, kind, replaces=False, **check)
    sweep_stale(path)
    marker = read_marker(path) if path.is_dir() else None
    if marker is not None and marker["kind"] != kind:  # --overwrite of another output of ours
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if read_marker(path) is None or read_marker(path)["kind"] != kind:
        write_json(path / MARKER, {"kind": kind, "written_by": "mmq-rec"})
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str = "artefact", *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces the directory `path`.

    `path` must pass `check_output(path, kind)` first, so only a new or empty directory, or an
    earlier output of the same kind (`overwrite`: of any kind of ours), is ever replaced. The new
    directory carries our marker. The old one is moved aside first and deleted only after the
    new one is in place, so a crash leaves either the old or the new directory (plus at most a
    stray sibling, removed by the next run), never a mix."""
    path = Path(path)
    check_output(path, kind, overwrite=overwrite)
    sweep_stale(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        write_json(tmp / MARKER, {"kind": kind, "written_by": "mmq-rec"})
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None and not path.exists():
                os.replace(old, path)  # put the old output back rather than lose both
            raise
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
