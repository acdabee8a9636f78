"""User-facing errors.

Every problem a user can fix (bad params, unreachable source, corrupt archive, ...) is raised as a
:class:`LungxrayError`. Stage scripts catch it, print the message and exit with status 2, so the user reads what went
wrong and what to do instead of a traceback.
"""

from __future__ import annotations


class LungxrayError(Exception):
    """An error with a message meant for the user (what went wrong and what to do)."""


class ConfigError(LungxrayError):
    """params.yaml (or a profile) is invalid."""


class SourceError(LungxrayError):
    """A data source cannot be read, reached or mapped."""


class WriteError(LungxrayError):
    """A file could not be written (a read-only or failing file system, no permission, ...)."""


class DiskFullError(WriteError):
    """No space left on the file system a file is written to."""
