"""Retinal datasets for losam-peft: one-call loaders for the official download layouts.

``load(name, root, split=None)`` -> ``datasets.Dataset``/``DatasetDict`` with ``image``, ``label``
(class ids), ``fov``, ``id`` and metadata columns; label names are stored with the data
(``label_info(ds)`` reads them back). ``DATASETS`` describes every dataset, ``DATASET_GROUPS`` the
paper's zero-shot protocol; ``select_shots`` draws K training images; ``convert`` writes a dataset
to disk (and the Hub) with a dataset card and its label description (``id2label.json``);
``load_saved`` reads such a folder (or any ``save_to_disk`` folder, or a Hub dataset id) back. The
synthetic generator lives in ``.synthetic`` and is imported on first use.
"""

from __future__ import annotations

import importlib

from .io import (
    DEFAULT_MAX_PIXELS,
    DataError,
    DatasetLayoutError,
    ImageTooLargeError,
    SkippedFileWarning,
    open_image,
)
from .loaders import (
    LABEL_NAMES_KEY,
    LABELS_FILE,
    attach_label_names,
    convert,
    dataset_card,
    folder,
    label_feature,
    label_info,
    load,
    load_group,
    read_labels_file,
    select_shots,
    skipped_samples,
)
from .saved import load_saved
from .specs import DATASET_GROUPS, DATASETS, DatasetGroup, DatasetSpec, Files, GroupMember, Mask

__all__ = [
    "DATASETS",
    "DATASET_GROUPS",
    "DEFAULT_MAX_PIXELS",
    "LABELS_FILE",
    "LABEL_NAMES_KEY",
    "DataError",
    "DatasetGroup",
    "DatasetLayoutError",
    "DatasetSpec",
    "Files",
    "GroupMember",
    "ImageTooLargeError",
    "Mask",
    "SkippedFileWarning",
    "attach_label_names",
    "convert",
    "dataset_card",
    "folder",
    "label_feature",
    "label_info",
    "load",
    "load_group",
    "load_saved",
    "open_image",
    "read_labels_file",
    "select_shots",
    "skipped_samples",
]


def __getattr__(name: str):
    """Lazy access to the synthetic generator (``losam_peft.data.synthetic``, written separately):
    ``losam_peft.data.synthetic`` and any public name it defines, imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        synthetic = importlib.import_module(f"{__name__}.synthetic")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.synthetic":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    if name == "synthetic":
        return synthetic
    try:
        return getattr(synthetic, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted({*globals(), "synthetic"})
