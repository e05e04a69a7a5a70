"""Errors the library raises for bad input.

Every error a user can cause (bad data layout, bad config key, weights that do not match) is a
``FerError``: its message is one line that names the file or key and says how to fix it. Entry points
catch ``FerError`` and print the message alone, without a traceback; anything else is a bug and keeps
its traceback.
"""


class FerError(Exception):
    """A problem with the user's input, explained in one line."""


class DataError(FerError):
    """The dataset folder is missing, misshapen, or holds unreadable files."""


class ConfigError(FerError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class CheckpointError(FerError):
    """A checkpoint or weights file cannot be used with the requested model."""


class DivergedError(FerError, FloatingPointError):
    """Training produced a non-finite loss, weight or metric (lower the learning rate or clip gradients).

    Also a FloatingPointError, so code that catches numeric failures as such catches it too."""
