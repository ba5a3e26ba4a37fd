"""The one error type users see: a message saying what went wrong and a hint saying what to do."""

from __future__ import annotations


class TunewiseError(Exception):
    """A problem caused by the user's input or environment, shown as one clear line (no traceback).

    ``message`` names the file, line or key at fault; ``hint`` says what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message
