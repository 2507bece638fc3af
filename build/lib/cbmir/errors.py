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


class LockBusyError(CbmirError, RuntimeError):
    """Another live process holds the lock of a cell (or cache entry): it is being computed elsewhere."""

    def __init__(self, path, holder: str, message: str | None = None):
        super().__init__(message or f"{path} is held by {holder}")
        self.path, self.holder = path, holder


class DiskFullError(CbmirError, OSError):
    """No space left for a file: the message names the file and the space it needs."""


class NonFiniteEmbeddingError(CbmirError, RuntimeError):
    """Embeddings with NaN or Inf values: a search over them would rank garbage."""

    def __init__(self, message: str, bad_rows: int):
        super().__init__(message)
        self.bad_rows = bad_rows
