"""Errors about the user's input rather than rmlab's code: the CLI shows their message alone
(the whole traceback with HYDRA_FULL_ERROR=1, and in the run's log file). ConfigError and DataError
are ValueErrors, so callers may catch either; NonFiniteError stops a diverging run."""


class ConfigError(ValueError):
    """A config value that cannot work (unknown key, more devices than exist, ...); says what to do."""


class DataError(ValueError):
    """Input data that cannot be trained on; names the file, the line or row, and the problem."""


class NonFiniteError(RuntimeError):
    """A NaN or infinite loss or reward (model.on_nonfinite=stop); names the step and the pairs."""
