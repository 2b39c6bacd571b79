"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a file, a config, a flag), not a
bug. The CLI prints ``str(error)`` as one line and exits with code 2, never a traceback.
The message always names where the problem is: file, line (or row) and field.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with user input, reported as ``file:line: field: message``.

    ``line`` is 1-based (a JSONL line, a CSV row counting the header as line 1, a YAML
    line); ``field`` is the key, column or option at fault. Either may be ``None`` when the
    problem concerns the whole file (e.g. it does not exist).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)
