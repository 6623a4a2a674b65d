"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class FuturesegError(Exception):
    """Bad input or config. The message names the file or config key and what is wrong."""


class DataError(FuturesegError):
    """A dataset file or folder is missing, unreadable or breaks the Dataset_Student contract."""


class ConfigError(FuturesegError):
    """A config value is missing, of the wrong type or out of range."""
