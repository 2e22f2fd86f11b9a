"""The exception family users see at the library boundary.

Every problem caused by the user's input is raised as a GoodnetError subclass with a one-line
message; the CLI prints it and exits with status 2. Anything else is a bug and keeps its traceback.
Catch `GoodnetError` for all of them, or one subclass for one kind of input.
"""


class GoodnetError(Exception):
    """A problem with the user's input, explained in one line."""


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


__all__ = ["DataError", "GoodnetError", "GoodnetWarning", "ModelError", "NonFiniteOutputs", "OutputError", "SettingsError",
           "TrainingDiverged"]
