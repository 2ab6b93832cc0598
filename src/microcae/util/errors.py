"""The one exception type that reaches users as a one-line message."""

from __future__ import annotations


class MicrocaeError(Exception):
    """A problem with the user's input or environment.

    The command line prints ``str(error)`` on one line of stderr and exits with status 2;
    Python callers catch it like any other exception. Messages name the file or option at fault.
    """


class MicrocaeWarning(UserWarning):
    """Something worth telling the user that does not stop the job (e.g. colour discarded)."""
