"""One exception type for bad input, always naming where the problem is."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, line and field when they are known.

    >>> str(DataError("not a number", path="a.jsonl", line=3, field="price"))
    "a.jsonl:3: field 'price': not a number"
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        if field is not None:
            where += f"field {field!r}: "
        super().__init__(where + message)
