"""The exception family users see at the library boundary.

Every problem caused by the user's input is raised as a GoodnetError subclass with a one-line
message; the CLI prints it and exits with status 2. Anything else is a bug and keeps its traceback.
Catch `GoodnetError` for all of them, or one subclass for one kind of input.
"""

import os


def shown_path(path: str | os.PathLike) -> str:
    """A path for a one-line message: quoted, control characters escaped."""
    text = os.fspath(path)
    return repr(text) if not text.isprintable() or "'" in text else f"'{text}'"


def one_line(message: str) -> str:
    """`message` with every control character escaped, so it prints as exactly one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(message))


class GoodnetError(Exception):
    """A problem with the user's input, explained in one line (control characters escaped)."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


class DataError(GoodnetError):
    """A data file (or image) cannot be read, or its contents do not fit the model."""


class ModelError(GoodnetError):
    """A model file cannot be read or written, or the model cannot be run, traced or split."""


class NonFiniteOutputs(ModelError):
    """A model's outputs are NaN or infinite: no label or score drawn from them means anything."""


class SettingsError(GoodnetError):
    """An option or a repair setting is invalid, or names something the model does not have."""


class OutputError(GoodnetError):
    """The output directory or file cannot be written."""


class GoodnetWarning(UserWarning):
    """Something doubtful about the input that does not stop the run (e.g. test data that is not
    held out); the CLI prints it as one `goodnet: warning:` line."""


class TrainingDiverged(GoodnetError):
    """Training went wrong (a loss or weight that is not finite); the do-no-harm guard retries milder."""


__all__ = [
    "DataError",
    "GoodnetError",
    "one_line",
    "shown_path",
    "GoodnetWarning",
    "ModelError",
    "NonFiniteOutputs",
    "OutputError",
    "SettingsError",
    "TrainingDiverged",
]
