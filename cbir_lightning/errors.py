"""The toolkit's user-facing error: its message is one line that names the file or key and the fix."""

from data_modules.errors import DataError


class CbirError(Exception):
    """Bad input to a command (checkpoint, config value, file); reported as one line, no traceback."""


USER_ERRORS = (CbirError, DataError)
