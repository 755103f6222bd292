"""The errors a user can cause (bad data, parameters, model files, run folders), in one tuple.

The CLI and the app catch exactly these and show the message; anything else is a bug. This module
is light on purpose (no torch, numpy or diffusers), so the CLI can catch them without paying for
the heavy imports before it has parsed its arguments.
"""

from __future__ import annotations

from curator.config import ConfigError


class DataError(ValueError):
    """Bad dataset input; the message names the offending path, class or parameter."""


class ModelFileError(FileNotFoundError):
    """A model folder or file is missing or unreadable; the message names the path."""


class StoreError(RuntimeError):
    """A run folder that is missing, not a run, or inconsistent; the message names the path."""


USER_ERRORS = (ConfigError, DataError, ModelFileError, StoreError, FileExistsError, FileNotFoundError)


__all__ = ["USER_ERRORS", "ConfigError", "DataError", "ModelFileError", "StoreError"]
