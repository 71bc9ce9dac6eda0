"""The one exception type users see: its message is printed as a single line by the CLI."""


class PyorthrusError(Exception):
    """A user-facing failure (bad file, bad flag, missing build). The message names the file and the problem."""
