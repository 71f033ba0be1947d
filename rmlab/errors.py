"""Errors about the user's input rather than rmlab's code: the CLI shows their message alone
(the whole traceback with HYDRA_FULL_ERROR=1). Both are ValueErrors, so callers may catch either."""


class ConfigError(ValueError):
    """A config value that cannot work (unknown key, more devices than exist, ...); says what to do."""


class DataError(ValueError):
    """Input data that cannot be trained on; names the file, the line or row, and the problem."""
