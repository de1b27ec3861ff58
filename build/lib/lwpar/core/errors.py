"""The one error type meant for the user: printed by the CLI as one line, without a traceback."""


class LwparError(Exception):
    """An error meant for the user: printed as one line, without a traceback."""
