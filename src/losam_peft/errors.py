"""The package's one error family.

Every error this package raises on purpose derives from :class:`LoSamError`; each also keeps the built-in base it
had before (``ValueError``, ``RuntimeError``, ``FileNotFoundError``…) so ``except ValueError`` in user code still
works. The command line catches ``LoSamError``, prints its message on one ``error: …`` line and exits with status 2;
anything else escaping is a bug.

Messages say what is wrong in library terms (the argument, the file, the value); the command line may add the
option's name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "AdapterFolderError",
    "CheckpointError",
    "DataError",
    "DatasetLayoutError",
    "HubError",
    "ImageTooLargeError",
    "LabelMismatchError",
    "LoSamError",
    "LoSamTypeError",
    "LoSamValueError",
    "OutputExistsError",
    "PredictionError",
    "TrainingError",
]


class LoSamError(Exception):
    """Base of every error losam-peft raises on purpose. ``path`` is the offending file or folder, when there is one."""

    def __init__(self, message: str = "", path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class LoSamValueError(LoSamError, ValueError):
    """An argument or option value that cannot be used (out of range, unknown name, wrong type of thing)."""


class DataError(LoSamError, ValueError):
    """A file (or a dataset root) that cannot be turned into a correct sample; ``path`` names it."""


class DatasetLayoutError(DataError, FileNotFoundError):
    """The root does not hold the dataset asked for (or not the requested split)."""


class ImageTooLargeError(DataError):
    """Decompression-bomb guard: the image announces (or inflates to) too many pixels."""


class LabelMismatchError(DataError):
    """The model's classes and the dataset's classes cannot be matched."""


class CheckpointError(LoSamError, ValueError):
    """A checkpoint or adapter could not be found, or is not what it claims to be."""


class AdapterFolderError(LoSamError, ValueError):
    """An adapter folder that is incomplete or inconsistent."""


class OutputExistsError(LoSamError, FileExistsError):
    """An output that exists already and may not be replaced."""


class TrainingError(LoSamError, RuntimeError):
    """Training could not start or could not go on; the message says why and what was kept."""


class PredictionError(LoSamError, RuntimeError):
    """A problem with a prediction run as a whole (no inputs, an output folder that cannot be written)."""


class HubError(LoSamError, RuntimeError):
    """The Hugging Face Hub refused or could not be reached."""


class LoSamTypeError(LoSamError, TypeError):
    """An argument of the wrong kind, or an option that the callee does not know."""
