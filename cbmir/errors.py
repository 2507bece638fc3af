"""Errors that the command line reports as one clear message (no traceback) and a non-zero exit."""


class CbmirError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class ConfigError(CbmirError, ValueError):
    """An invalid or inconsistent configuration, caught before any work starts."""


class DataError(CbmirError, RuntimeError):
    """A dataset file that is missing, unreachable or corrupt."""


class WeightsError(CbmirError, RuntimeError):
    """Model weights that cannot be found, reached or loaded strictly."""


class InvalidCellError(ConfigError):
    """A combination that does not exist (e.g. a 3D dataset at 224 px): an error alone, skipped in a sweep."""
