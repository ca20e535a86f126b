"""``UserError``: a problem with what the user gave (a setting, a file, a name), not a bug in lampo-pl.

The ``lampo`` command prints such an error as one line (``lampo fit: error: <message>``) and exits
with status 2, without a traceback (``LAMPO_TRACEBACK=1`` shows it). Its message names the field,
file or folder and what is allowed, so that the line alone says what to change.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad setting, a missing or damaged file, a name that does not resolve; one line, no traceback.

    A ``ValueError`` so that Python callers who catch ``ValueError`` for bad input keep working.
    """
