"""Errors raised by the data pipeline."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or unreadable input or prepared data.

    The message always names the file and, where it applies, the line number
    (``path:line: ...``) or the column (``path: column 'x': ...``).
    """


def at_line(path: str | Path, line: int, message: str) -> DataError:
    """A DataError located at ``path:line``."""
    return DataError(f"{path}:{line}: {message}")


def at_column(path: str | Path, column: str, message: str) -> DataError:
    """A DataError about the column ``column`` of ``path``."""
    return DataError(f"{path}: column {column!r}: {message}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
