"""One exception type for every user mistake.

The CLI prints ``error: <message>`` for these and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class SmallmedError(Exception):
    """Bad input: a missing file, a wrong key, a value out of range.

    The message is one sentence that names the file, key or value and says what was expected.
    """


class SettingsChangedError(SmallmedError):
    """A study folder holds cells run with other settings (``--fresh`` starts it over)."""


class NonFiniteLossError(SmallmedError):
    """Training produced NaN or inf; the last good checkpoint is kept."""
