"""Where training and evaluation samples come from, checked before any training starts.

Training data is one of: one image and its mask (``train_image`` + ``train_mask``, one-shot), a folder with
``images/`` and ``masks/`` paired by name (``train_dir``, few-shot), or a named dataset (``dataset`` + ``data_root``
[+ ``split``]); ``shots=K, shot_seed=S`` draws K images (the ids drawn are recorded with the run). Evaluation data
takes the same forms with ``eval_*``; with a ``dataset`` and an ``eval_split`` the same dataset is used.
``dataset_options`` are the dataset's own variants (``subset`` of ROSE-1, ``label``/``projection`` of OCTA-500,
``include_optic_disc`` of IDRiD) and the engine's options (``mask_threshold``, ``derive_fov``, ``max_pixels``).

:class:`DataOptions` holds these settings (its fields' help texts are what the command line shows);
:func:`load_training_data` turns them into samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from datasets import DatasetDict

from ..errors import DataError, LabelMismatchError
from ..labels import is_generic_label, normalise_id2label
from .loaders import folder, load, registry_name, seeded_order, select_shots
from .samples import Sample, id2label_of, read_pair, samples_from_dataset
from .saved import load_saved, saved_kind, saved_provenance
from .specs import DATASETS
from .tags import normalise_modality, normalise_task

__all__ = ["DataOptions", "TrainingData", "load_dataset_split", "load_folder", "load_training_data"]


@dataclass
class DataOptions:
    """Training (and optional evaluation) data of a run. Field names are the command line's option names."""

    train_image: Optional[str] = field(default=None, metadata={"help": "one-shot: the training image"})
    train_mask: Optional[str] = field(
        default=None, metadata={"help": "one-shot: its mask (0/255, 0/1, 1-bit, class ids or losam palette)"}
    )
    train_dir: Optional[str] = field(
        default=None, metadata={"help": "few-shot: a folder with images/ and masks/ paired by file name"}
    )
    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "a dataset name (losam_peft.data.DATASETS) or 'folder', with --data-root; or a saved dataset "
            "folder (losam data convert, save_to_disk) or a Hub dataset id (owner/name), without --data-root"
        },
    )
    data_root: Optional[str] = field(default=None, metadata={"help": "where the dataset's download is unpacked"})
    split: Optional[str] = field(default=None, metadata={"help": "dataset split to train on (default: train, or all)"})
    shots: Optional[int] = field(
        default=None, metadata={"help": "draw K training images from the dataset/folder", "min": 1}
    )
    shot_seed: int = field(default=0, metadata={"help": "seed of the K-shot draw (recorded in the outputs)", "min": 0})
    skip_bad: bool = field(default=False, metadata={"help": "skip unreadable dataset files with a warning"})
    dataset_options: dict = field(default_factory=dict, metadata={"help": "dataset variants and engine options"})
    val_image: Optional[str] = field(default=None, metadata={"help": "a validation image (chooses the saved step)"})
    val_mask: Optional[str] = field(default=None, metadata={"help": "its mask"})
    val_dir: Optional[str] = field(default=None, metadata={"help": "a validation folder with images/ and masks/"})
    val_dataset: Optional[str] = field(default=None, metadata={"help": "a dataset name for validation"})
    val_data_root: Optional[str] = field(default=None, metadata={"help": "its root (default: the data root)"})
    val_split: Optional[str] = field(
        default=None, metadata={"help": "its split (default: validation when it exists)"}
    )
    val_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "hold out this fraction of the training images for validation", "above": 0.0, "below": 1.0},
    )
    eval_image: Optional[str] = field(default=None, metadata={"help": "an evaluation image"})
    eval_mask: Optional[str] = field(default=None, metadata={"help": "its mask"})
    eval_dir: Optional[str] = field(default=None, metadata={"help": "a folder with images/ and masks/"})
    eval_dataset: Optional[str] = field(default=None, metadata={"help": "a dataset name for evaluation"})
    eval_data_root: Optional[str] = field(default=None, metadata={"help": "its root (default: the data root)"})
    eval_split: Optional[str] = field(default=None, metadata={"help": "its split (default: test when it exists)"})
    labels: Optional[dict] = field(
        default=None,
        metadata={"help": "class names the user gave (--labels); they must agree with the names the data carries"},
    )


@dataclass
class TrainingData:
    """``train`` samples; ``val`` chooses the saved step (never drawn from ``eval``); ``eval`` is monitoring and the
    final report only."""

    train: list[Sample]
    eval: list[Sample] | None = None
    val: list[Sample] | None = None
    val_source: str | None = None
    id2label: dict[int, str] | None = None
    modality: str | None = None
    task: str | None = None
    datasets: list[str] = field(default_factory=list)


def load_dataset_split(
    name: str,
    root: str | None,
    split: str | None,
    *,
    skip_bad: bool = False,
    default: str = "train",
    options: Mapping[str, Any] | None = None,
):
    """One ``datasets.Dataset`` of a named dataset: ``split``, else ``default`` when the dataset has that split.

    ``name`` may also be a saved dataset folder (``losam data convert``, ``save_to_disk``, data files) or a Hub
    dataset id (``owner/name``); those need no ``root`` (it is not used) and carry their own label names."""
    if saved_kind(name) is not None:
        return load_saved(name, split, default=default, options=options)
    if name != "folder" and registry_name(name) is None:
        raise DataError(
            f"unknown dataset {name!r}: not one of {', '.join(sorted(DATASETS))}, folder; not an existing saved "
            "dataset folder; not a Hub dataset id (owner/name)"
        )
    if not root:
        raise DataError(f"the dataset {name} needs a data root (where its download is unpacked)")
    if not Path(root).exists():
        raise DataError(f"{root}: the data root of {name} does not exist", root)
    spec = DATASETS.get(registry_name(name) or "")
    if split is None and spec is not None and spec.has_splits:
        split = default if default in spec.split_names else None
    loaded = load(name, root, split, skip_bad=skip_bad, **dict(options or {}))
    if isinstance(loaded, DatasetDict):
        if split is None and len(loaded) > 1:
            raise DataError(f"{name} has splits {list(loaded)}; choose one")
        loaded = next(iter(loaded.values()))
    return loaded


def load_folder(root: str, *, skip_bad: bool = False, options: Mapping[str, Any] | None = None):
    """The samples of an ``images/`` + ``masks/`` folder as one ``datasets.Dataset``."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: the folder does not exist", path)
    loaded = folder(path, skip_bad=skip_bad, **dict(options or {}))
    if isinstance(loaded, DatasetDict):
        loaded = next(iter(loaded.values()))
    return loaded


def _select(dataset, shots: int | None, seed: int):
    if shots is None:
        return dataset
    if shots < 1:
        raise DataError(f"shots must be at least 1, got {shots}")
    if shots > len(dataset):
        raise DataError(f"{shots} shots asked for, but only {len(dataset)} images are available")
    subset, _ = select_shots(dataset, shots, seed)
    return subset


def _dataset_meta(name: str | None, dataset=None):
    """The dataset's modality and task as short tags (``fundus``, ``vessels``) for adapter configs and cards, and
    the name it is recorded under: the registry name; for a saved dataset the name of the dataset it was converted
    from (else the folder's name), for a Hub dataset its id."""
    key = registry_name(name) if name else None
    spec = DATASETS.get(key) if key else None
    if spec is not None:
        return normalise_modality(spec.modality), normalise_task(spec.task), key
    kind = saved_kind(name) if name else None
    if kind is None or dataset is None:
        return None, None, name
    meta = saved_provenance(dataset)
    origin = meta.get("dataset")
    if kind == "hub":
        recorded = name
    elif isinstance(origin, str) and origin in DATASETS:
        recorded = origin
    else:
        recorded = Path(name).expanduser().resolve().name
    return normalise_modality(meta.get("modality")), normalise_task(meta.get("task")), recorded


def _agreed_labels(given, found, source: str) -> dict[int, str] | None:
    """The class names of a run: the data's, checked against the names the user gave (``labels``). Different names
    (or counts) are a :class:`LabelMismatchError`; generic names in the data (``foreground``, ``class_2``: a folder
    without a label description) take the user's names."""
    given = normalise_id2label(given) if given is not None else None
    if given is None or found is None:
        return given or found
    generic = all(is_generic_label(n) for i, n in found.items() if i != 0)
    if len(given) != len(found) or (
        not generic and [n.lower() for n in given.values()] != [n.lower() for n in found.values()]
    ):
        raise LabelMismatchError(
            f"the labels given ({', '.join(given.values())}) disagree with the labels {source} carries "
            f"({', '.join(found.values())}); leave out --labels to use the data's, or fix the label description"
        )
    return given


def load_training_data(options: DataOptions | None = None, *, num_labels: int | None = None, **settings) -> TrainingData:
    """Samples for training (and evaluation) from ``options`` (or the same settings as keyword arguments)."""
    if options is None:
        options = DataOptions(**settings)
    elif settings:
        raise TypeError("give a DataOptions or keyword settings, not both")
    o = options
    sources = [bool(o.train_image or o.train_mask), bool(o.train_dir), bool(o.dataset)]
    if sum(sources) != 1:
        raise DataError("give exactly one training source: train_image with train_mask, train_dir, or dataset")
    id2label, modality, task, datasets = None, None, None, []
    if o.train_image or o.train_mask:
        if not (o.train_image and o.train_mask):
            raise DataError("one-shot training needs both train_image and train_mask")
        if o.shots is not None:
            raise DataError("shots (--shots) draws images from a dataset or folder; it has no meaning with train_image")
        labels = len(o.labels) if o.labels else num_labels
        train = [read_pair(o.train_image, o.train_mask, labels)]
        id2label = normalise_id2label(o.labels) if o.labels else None
    else:
        if o.train_dir:
            dataset = load_folder(o.train_dir, skip_bad=o.skip_bad)
        else:
            dataset = load_dataset_split(
                o.dataset, o.data_root, o.split, skip_bad=o.skip_bad, default="train", options=o.dataset_options
            )
            modality, task, recorded = _dataset_meta(o.dataset, dataset)
            datasets.append(recorded)
        id2label = _agreed_labels(o.labels, id2label_of(dataset), o.train_dir or o.dataset)
        dataset = _select(dataset, o.shots, o.shot_seed)
        train = samples_from_dataset(dataset)
    if not train:
        raise DataError("the training set is empty")

    evaluation = None
    if o.eval_image or o.eval_mask:
        if not (o.eval_image and o.eval_mask):
            raise DataError("evaluation on one image needs both eval_image and eval_mask")
        evaluation = [read_pair(o.eval_image, o.eval_mask, num_labels or (len(id2label) if id2label else None))]
    elif o.eval_dir:
        evaluation = samples_from_dataset(load_folder(o.eval_dir, skip_bad=o.skip_bad))
    elif o.eval_dataset or (o.dataset and o.eval_split):
        name = o.eval_dataset or o.dataset
        root = o.eval_data_root or o.data_root
        same = name == o.dataset
        loaded = load_dataset_split(
            name, root, o.eval_split, skip_bad=o.skip_bad, default="test", options=o.dataset_options if same else None
        )
        evaluation = samples_from_dataset(loaded)
        recorded = _dataset_meta(name, loaded)[2]
        if recorded not in datasets:
            datasets.append(recorded)
    if evaluation is not None and not evaluation:
        raise DataError("the evaluation set is empty")
    train, validation, val_source = _validation(o, train, id2label, num_labels, datasets)
    if evaluation and validation:
        shared = {s.id for s in validation} & {s.id for s in evaluation}
        if shared and val_source != "val_fraction":
            raise DataError(
                f"the validation set shares images with the evaluation set ({sorted(shared)[:3]}); the step kept "
                "must be chosen on data the final report does not use"
            )
    return TrainingData(
        train=train, eval=evaluation, val=validation, val_source=val_source, id2label=id2label, modality=modality,
        task=task, datasets=datasets,
    )


def _validation(o: DataOptions, train: list[Sample], id2label, num_labels, datasets):
    """``(train, validation, how)``: validation samples from the ``val_*`` settings, or ``val_fraction`` of the
    training images (a seeded draw; they are then not trained on)."""
    given = [bool(o.val_image or o.val_mask), bool(o.val_dir), bool(o.val_dataset or o.val_split),
             o.val_fraction is not None]  # fmt: skip
    if sum(given) > 1:
        raise DataError("give at most one validation source: val_image with val_mask, val_dir, val_dataset, or "
                        "val_fraction")  # fmt: skip
    labels = num_labels or (len(id2label) if id2label else None)
    if o.val_image or o.val_mask:
        if not (o.val_image and o.val_mask):
            raise DataError("validation on one image needs both val_image and val_mask")
        return train, [read_pair(o.val_image, o.val_mask, labels)], "val_image"
    if o.val_dir:
        return train, samples_from_dataset(load_folder(o.val_dir, skip_bad=o.skip_bad)), "val_dir"
    if o.val_dataset or o.val_split:
        name = o.val_dataset or o.dataset
        if not name:
            raise DataError("val_split needs a dataset (val_dataset, or the training dataset)")
        root = o.val_data_root or o.data_root
        loaded = load_dataset_split(name, root, o.val_split, skip_bad=o.skip_bad, default="validation",
                                    options=o.dataset_options if name == o.dataset else None)  # fmt: skip
        recorded = _dataset_meta(name, loaded)[2]
        if recorded not in datasets:
            datasets.append(recorded)
        return train, samples_from_dataset(loaded), f"{name} ({o.val_split or 'validation'})"
    if o.val_fraction is not None:
        if not 0.0 < o.val_fraction < 1.0:
            raise DataError(f"val_fraction must be between 0 and 1, got {o.val_fraction}")
        count = int(round(len(train) * o.val_fraction))
        if count < 1 or count >= len(train):
            raise DataError(
                f"val_fraction {o.val_fraction} of {len(train)} training image(s) leaves no validation image or "
                "no training image"
            )
        order = seeded_order([s.id for s in train], o.shot_seed, salt="val:")
        held = {train[i].id for i in order[:count]}
        return [s for s in train if s.id not in held], [s for s in train if s.id in held], "val_fraction"
    return train, None, None


# names of earlier releases
load_split = load_dataset_split
_from_folder = load_folder
