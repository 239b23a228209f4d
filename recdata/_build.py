"""Helpers every loader shares: line-numbered reading, an item index that refuses duplicates and
unknown ids, the drop counters that make every removal visible, and the real-world checks
(ratings, repeat interactions, tied timestamps) that every loader reports the same way."""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.schema import RecDataset

# UTF-16 files (as PowerShell and Excel write them) begin with one of these byte-order marks.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a UTF-8 text file (gzip read transparently). "utf-8-sig" drops a leading byte-order
    mark, which Windows tools write; universal newlines turn CRLF line ends into "\\n"."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    try:
        head = raw.peek(2)[:2]
    except (OSError, EOFError) as e:  # e.g. a .gz file that is not gzip
        raw.close()
        raise DataError(f"cannot read ({e})", path=path) from None
    if head in _UTF16_BOMS:
        raw.close()
        raise DataError("is UTF-16 encoded; save it as UTF-8", path=path)
    return io.TextIOWrapper(raw, encoding="utf-8-sig")


def read_text(path: str | Path) -> str:
    """The whole file as text, with the same BOM / CRLF / gzip handling as `open_text`."""
    with open_text(path) as f:
        try:
            return f.read()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read ({e})", path=path) from None


def read_json(path: str | Path) -> Any:
    """Parse a whole JSON file. Unlike `recdata.io.read_json` this accepts a leading BOM."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno) from None


def iter_lines(path: str | Path, strip: bool = True) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for non-blank lines; gzip is read transparently.

    With `strip=False` only the line end is removed, so tab-separated files keep empty trailing fields."""
    with open_text(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                text = line.strip() if strip else line.rstrip("\r\n")
                if text.strip():
                    yield lineno, text
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


def as_rating(value: Any, path: str | Path, line: int | None, field: str) -> float | None:
    """A rating as float (None when absent or ""); numeric text such as "4.0" is accepted,
    anything else that is not a finite number is an error."""
    if value is None or value == "":
        return None
    try:
        rating = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        rating = None
    if rating is None or not math.isfinite(rating):
        raise DataError(f"rating must be a number, got {value!r}", path=path, line=line, field=field)
    return rating


@dataclass
class Drops:
    """What a loader removed, by reason. Removal happens only where the user asked for it
    (`requested`); only then may a user left without interactions be dropped (and counted)."""

    counts: dict[str, int] = field(default_factory=dict)
    requested: bool = False

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + n


class ItemIndex:
    """Maps the source's item keys to 0-based rows of the item table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.where: list[tuple[str, int | None]] = []  # (file, line) of each row, for error messages
        self._index: dict[str, int] = {}

    def add(self, key: Any, row: dict[str, Any], path: str | Path, line: int | None) -> int:
        key = str(key)
        if key in self._index:
            p, ln = self.where[self._index[key]]
            first = f"{p}:{ln}" if ln is not None else p
            raise DataError(f"duplicate item id {key!r} (first defined at {first})",
                            path=path, line=line, field="item_id")
        self._index[key] = len(self.rows)
        self.where.append((str(path), line))
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


# --------------------------------------------------------------------------- real-world checks
def check_min_rating(min_rating: float | None) -> None:
    if min_rating is not None and not math.isfinite(min_rating):
        raise DataError(f"must be a finite number, got {min_rating}", field="min_rating")


def no_ratings(fmt: str, path: str | Path) -> DataError:
    return DataError(f"--min-rating needs ratings, and the {fmt} format carries none", path=path,
                     field="min_rating")


def rating_summary(ratings: Sequence[Sequence[float | None]], min_rating: float | None) -> dict[str, Any]:
    """How many interactions are rated, how many of those are below 4 (the usual positive
    threshold), and the distribution of values when there are few distinct ones (star ratings)."""
    values = [r for rs in ratings for r in rs if r is not None]
    counts: dict[float, int] = {}
    for r in values:
        counts[r] = counts.get(r, 0) + 1
    out: dict[str, Any] = {"rated_interactions": len(values), "below_4": sum(r < 4 for r in values),
                           "min_rating": min_rating}
    if len(counts) <= 20:
        out["distribution"] = {f"{k:g}": counts[k] for k in sorted(counts)}
    return out


def curate(seqs: list[list], columns: dict[str, list[list]], ratings: list[list[float | None]] | None,
           *, min_rating: float | None, drop_repeats: bool, drops: Drops
           ) -> tuple[list[list], dict[str, list[list]], dict[str, Any]]:
    """Apply `min_rating` and `drop_repeats` to per-user sequences (oldest first) and the columns
    aligned with them; return the kept parts and what to report: `ratings` (when the source has
    them) and `repeats` (a user meeting the same item again, counted before any is dropped)."""
    report: dict[str, Any] = {}
    keep = [[True] * len(s) for s in seqs]
    if ratings is not None and any(r is not None for rs in ratings for r in rs):
        report["ratings"] = rating_summary(ratings, min_rating)
        if min_rating is not None:
            # loaders refuse unrated interactions when min_rating is set, so r is a number here
            for k, rs in zip(keep, ratings, strict=True):
                for j, r in enumerate(rs):
                    if r < min_rating:
                        k[j] = False
            drops.add("below_min_rating", sum(k.count(False) for k in keep))
    repeats, repeat_users = 0, 0
    for k, seq in zip(keep, seqs, strict=True):
        seen: set = set()
        found = 0
        for j, item in enumerate(seq):
            if not k[j]:
                continue
            if item in seen:
                found += 1
                if drop_repeats:
                    k[j] = False  # keep the first occurrence only
            seen.add(item)
        repeats += found
        repeat_users += found > 0
    report["repeats"] = {"interactions": repeats, "users": repeat_users}
    if drop_repeats:
        drops.add("repeat_interactions", repeats)

    def pick(lists: list[list]) -> list[list]:
        return [[x for x, ok in zip(xs, k, strict=True) if ok] for xs, k in zip(lists, keep, strict=True)]

    return pick(seqs), {name: pick(col) for name, col in columns.items()}, report


def new_drops(drop_unknown: bool, min_rating: float | None, drop_repeats: bool) -> Drops:
    check_min_rating(min_rating)
    return Drops(requested=drop_unknown or min_rating is not None or drop_repeats)


def finish(name: str, fmt: str, index: ItemIndex, users: list[str], seqs: list[list[int]],
           drops: Drops, source: Sequence[Path], timestamps: list[list[float]] | None = None,
           splits: list[list[str]] | None = None, extra_meta: dict[str, Any] | None = None, *,
           ratings: list[list[float | None]] | None = None, min_rating: float | None = None,
           drop_repeats: bool = False, report: dict[str, Any] | None = None,
           inter_path: Path | None = None) -> RecDataset:
    """Apply `min_rating` / `drop_repeats` (unless the loader did and passes its `report`), drop
    users left empty (only when some removal was asked for, and counted), count the users whose
    validation/test target is decided by a tied timestamp, then build.

    meta gets `dropped` (by reason), `repeats`, `ratings` (sources with ratings) and
    `tied_target_users` (sources with timestamps)."""
    if report is None:
        columns = {k: v for k, v in (("timestamp", timestamps), ("split", splits)) if v is not None}
        seqs, columns, report = curate(seqs, columns, ratings, min_rating=min_rating,
                                       drop_repeats=drop_repeats, drops=drops)
        timestamps, splits = columns.get("timestamp"), columns.get("split")
    keep = [i for i, s in enumerate(seqs) if s]
    if len(keep) != len(seqs):
        if not drops.requested:
            first = next(i for i, s in enumerate(seqs) if not s)
            raise DataError(f"user {users[first]!r} has no interactions", path=inter_path or source[0])
        drops.add("users_left_empty", len(seqs) - len(keep))
    if timestamps is not None:
        timestamps = [timestamps[i] for i in keep]
    meta = {"format": fmt, "source": [str(p) for p in source], "dropped": dict(drops.counts), **report}
    if timestamps is not None:
        meta["tied_target_users"] = tied_target_users(timestamps)
    meta.update(extra_meta or {})
    return RecDataset.from_sequences(
        name, index.rows, [users[i] for i in keep], [seqs[i] for i in keep], timestamps=timestamps,
        splits=[splits[i] for i in keep] if splits is not None else None, meta=meta, item_where=index.where)


def tied_target_users(timestamps: Sequence[Sequence[float]]) -> int:
    """Users whose test or validation target is decided by a tie: the last two items, or the
    second- and third-to-last, share a timestamp, so only the file order put them in that order."""
    return sum(len(ts) >= 3 and (ts[-1] == ts[-2] or ts[-2] == ts[-3]) for ts in timestamps)
