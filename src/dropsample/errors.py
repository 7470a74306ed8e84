"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key


class DataError(UserError):
    pass
