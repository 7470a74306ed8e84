"""Errors the user can fix. The CLI prints them as one line (no traceback) and exits with
the error's code:

    2  bad input: a config value, an argument, a data source (UserError, ConfigError, DataError)
    3  a damaged or missing run file: checkpoint, summary, config, metrics (DamagedFile)

Runs that fail for other reasons (a bug, divergence, some sweep jobs failing) exit with 1.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key


class DataError(UserError):
    pass


class DamagedFile(UserError):
    """A run file that exists but cannot be read as what it should be."""

    exit_code = 3

    def __init__(self, path: Path | str, problem: str, fix: str):
        super().__init__(f"{path} is damaged ({problem}); {fix}")
        self.path, self.problem, self.fix = Path(path), problem, fix
