"""segjax's own error types: problems with what the user gave (config, data, files, weights).

The command-line tools (:func:`segjax.cli.clean_errors`) print a :class:`SegjaxError` as one
line naming the culprit; any other exception is a bug in segjax (or a library) and keeps its
traceback. Raise the most specific type below, with a message that names the file or config
key, the value found and what was expected. Each type also derives from the built-in exception
that describes it (``ValueError``, ``FileNotFoundError`` …), so callers of the Python API can
catch either.
"""


class SegjaxError(Exception):
    """A problem with the user's input that segjax detected and can describe in one line."""


class ConfigError(SegjaxError, ValueError):
    """A config value, flag or argument that is unknown, out of range or inconsistent."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, backbone, dataset …) that is not in segjax's table of known names.

    Both a :class:`ConfigError` and a ``KeyError``: :func:`segjax.models.create` has always
    raised ``KeyError`` for an unknown name, so callers catching that keep working.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message (it shows the missing key's repr).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DataError(SegjaxError, ValueError):
    """A dataset file that cannot be used: unreadable, mismatched or with invalid labels."""


class MissingFileError(SegjaxError, FileNotFoundError):
    """A file or directory the user named (or that a command needs) does not exist."""


class CheckpointMismatchError(SegjaxError, ValueError):
    """A checkpoint does not fit the configured model (a parameter's shape or presence differs)."""


class ConversionError(SegjaxError, ValueError):
    """A state dict does not fit the requested architecture (keys, shapes or classes)."""


class NonFiniteError(SegjaxError, RuntimeError):
    """Training produced a non-finite loss or gradient more often than allowed."""


__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "MissingFileError",
    "NonFiniteError",
    "SegjaxError",
    "UnknownNameError",
]
