"""Exception type shared by the data modules."""


class DataError(Exception):
    """Bad input data or arguments; the message is one line naming the file/path and the fix."""
