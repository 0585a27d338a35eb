"""The toolkit's user-facing error: its message is one line that names the file or key and the fix."""


class CbirError(Exception):
    """Bad input to a command (checkpoint, config value, data file or argument); reported as one line,
    no traceback."""
