"""The one exception type users see.

Every problem caused by the user's input (a missing file, a wrong shape, an unknown layer) is raised
as a GoodnetError with a one-line message; the CLI prints it and exits with status 2. Anything else
is a bug and keeps its traceback.
"""


class GoodnetError(Exception):
    """A problem with the user's input, explained in one line."""
