"""One error hierarchy: everything a user can fix derives from UserError, which every CLI prints as
one line (exit 2) instead of a traceback. `records.RecordError` and `client.EndpointError` derive
from UserError too (they carry file/line/field and HTTP status). Light: imports nothing from the package."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, bad option, missing file): printed without a traceback."""


class ConfigError(UserError):
    """An option or a combination of options that cannot run (all problems listed at once)."""


class ModelError(UserError):
    """A model directory that cannot be used as asked."""


class RunDirError(UserError):
    """A run directory in a state that forbids the request (finished, unfinished, other config)."""


class NotReady(UserError):
    """The command ran but its result cannot be used (a submission that fails the check, no usable
    reply at all): exit 1, where a problem with the input is exit 2."""
