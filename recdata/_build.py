"""Helpers every loader shares: line-numbered reading, an item index that refuses duplicates and
unknown ids, and the drop counters that make every removal visible."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recdata.errors import DataError


def open_text(path: str | Path) -> io.TextIOBase:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, stripped line) for non-blank lines; gzip is read transparently."""
    with open_text(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if line:
                    yield lineno, line
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read ({e})", path=path) from None


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        yield lineno, obj


def require(obj: dict[str, Any], key: str, path: str | Path, line: int | None, types: type | tuple = object) -> Any:
    if key not in obj or obj[key] is None:
        raise DataError("missing required field", path=path, line=line, field=key)
    value = obj[key]
    if not isinstance(value, types):
        raise DataError(f"expected {getattr(types, '__name__', types)}, got {type(value).__name__}",
                        path=path, line=line, field=key)
    return value


@dataclass
class Drops:
    """What a loader removed, by reason. Removal happens only where the user asked for it."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + n


class ItemIndex:
    """Maps the source's item keys to 0-based rows of the item table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}
        self._where: dict[str, str] = {}

    def add(self, key: Any, row: dict[str, Any], path: str | Path, line: int | None) -> int:
        key = str(key)
        if key in self._index:
            raise DataError(f"duplicate item id {key!r} (first defined at {self._where[key]})",
                            path=path, line=line, field="item_id")
        self._index[key] = len(self.rows)
        self._where[key] = f"{path}:{line}" if line is not None else str(path)
        self.rows.append({"item_id": key, **{k: v for k, v in row.items() if k != "item_id"}})
        return self._index[key]

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: Any) -> bool:
        return str(key) in self._index

    def lookup(self, key: Any, path: str | Path, line: int | None, drops: Drops | None) -> int | None:
        """Row of `key`; an unknown key is an error unless `drops` is given (then it is counted)."""
        idx = self._index.get(str(key))
        if idx is None:
            if drops is None:
                raise DataError(f"interaction with unknown item {str(key)!r} (pass --drop-unknown to drop "
                                "and count such interactions)", path=path, line=line, field="item")
            drops.add("unknown_item_interactions")
        return idx
