"""lwpar: lightweight pedestrian attribute recognition, as one reproducible pipeline."""

__version__ = "0.1.0"


class LwparError(Exception):
    """An error meant for the user: printed as one line, without a traceback."""
