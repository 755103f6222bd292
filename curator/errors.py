"""The errors a user can cause (bad data, parameters, model files, run folders), in one tuple.

The CLI and the app catch exactly these and show the message; anything else is a bug.
"""

from curator.config import ConfigError
from curator.data import DataError
from curator.generator import ModelFileError
from curator.store import StoreError

USER_ERRORS = (ConfigError, DataError, ModelFileError, StoreError, FileExistsError, FileNotFoundError)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "ModelFileError", "StoreError"]
