"""Turning command-line data options into training/evaluation samples, checked before any training starts.

Training data is one of: ``--train-image`` + ``--train-mask`` (one-shot), ``--train-dir`` (few-shot folder with
``images/`` and ``masks/`` paired by name), or ``--dataset NAME --data-root ROOT [--split S]``; ``--shots K
--shot-seed S`` draws K images (the ids drawn are recorded in ``train_config.json`` and ``metrics.json``).
Evaluation data takes the same forms with ``--eval-*``; with ``--dataset`` and no explicit evaluation data the
dataset's test split is used when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .io import DataError
from .samples import Sample, id2label_of, read_pair, samples_from_dataset


@dataclass
class TrainingData:
    train: list[Sample]
    eval: list[Sample] | None = None
    id2label: dict[int, str] | None = None
    modality: str | None = None
    task: str | None = None
    datasets: list[str] = field(default_factory=list)


def load_split(name: str, root: str, split: str | None, *, skip_bad: bool = False, default: str = "train"):
    """A single ``datasets.Dataset`` of a named dataset: ``split``, else ``default`` when the dataset has splits."""
    from datasets import DatasetDict

    from .loaders import load
    from .specs import DATASETS

    if name != "folder" and name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, folder")
    if not root:
        raise DataError(f"--dataset {name} needs --data-root (where its download is unpacked)")
    if not Path(root).exists():
        raise DataError(f"{root}: the data root of {name} does not exist", root)
    spec = DATASETS.get(name)
    if split is None and spec is not None and spec.has_splits:
        split = default if default in spec.split_names else None
    loaded = load(name, root, split, skip_bad=skip_bad)
    if isinstance(loaded, DatasetDict):
        if split is None and len(loaded) > 1:
            raise DataError(f"{name} has splits {list(loaded)}; choose one with --split")
        loaded = next(iter(loaded.values()))
    return loaded


def _from_folder(root: str, *, skip_bad: bool):
    from .loaders import folder

    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: the folder does not exist", path)
    loaded = folder(path, skip_bad=skip_bad)
    from datasets import DatasetDict

    if isinstance(loaded, DatasetDict):
        loaded = next(iter(loaded.values()))
    return loaded


def _select(dataset, shots: int | None, seed: int):
    if shots is None:
        return dataset
    from .loaders import select_shots

    if shots < 1:
        raise DataError(f"--shots must be at least 1, got {shots}")
    if shots > len(dataset):
        raise DataError(f"--shots {shots} asks for more images than the {len(dataset)} available")
    subset, _ = select_shots(dataset, shots, seed)
    return subset


def _dataset_meta(name: str | None):
    """The dataset's modality and task as short tags (``fundus``, ``vessels``) for adapter configs and cards."""
    from ..model_card import normalise_modality, normalise_task
    from .specs import DATASETS

    spec = DATASETS.get(name) if name else None
    if spec is None:
        return None, None
    return normalise_modality(spec.modality), normalise_task(spec.task)


def load_training_data(args) -> TrainingData:
    """Samples for ``losam train``/``compare`` from parsed arguments (see the module docstring)."""
    num_labels = getattr(args, "num_labels", None)
    labels = getattr(args, "labels", None)
    if labels:
        num_labels = len(labels)
    sources = [bool(args.train_image or args.train_mask), bool(args.train_dir), bool(args.dataset)]
    if sum(sources) != 1:
        raise DataError("give exactly one training source: --train-image/--train-mask, --train-dir or --dataset")
    id2label, modality, task, datasets = None, None, None, []
    if args.train_image or args.train_mask:
        if not (args.train_image and args.train_mask):
            raise DataError("one-shot training needs both --train-image and --train-mask")
        train = [read_pair(args.train_image, args.train_mask, num_labels)]
    else:
        if args.train_dir:
            dataset = _from_folder(args.train_dir, skip_bad=args.skip_bad)
        else:
            dataset = load_split(args.dataset, args.data_root, args.split, skip_bad=args.skip_bad, default="train")
            modality, task = _dataset_meta(args.dataset)
            datasets.append(args.dataset)
        id2label = id2label_of(dataset)
        dataset = _select(dataset, args.shots, args.shot_seed)
        train = samples_from_dataset(dataset)
    if not train:
        raise DataError("the training set is empty")

    evaluation = None
    if getattr(args, "eval_image", None) or getattr(args, "eval_mask", None):
        if not (args.eval_image and args.eval_mask):
            raise DataError("evaluation on one image needs both --eval-image and --eval-mask")
        evaluation = [read_pair(args.eval_image, args.eval_mask, num_labels or (len(id2label) if id2label else None))]
    elif getattr(args, "eval_dir", None):
        evaluation = samples_from_dataset(_from_folder(args.eval_dir, skip_bad=args.skip_bad))
    elif getattr(args, "eval_dataset", None) or (args.dataset and getattr(args, "eval_split", None)):
        name = args.eval_dataset or args.dataset
        root = getattr(args, "eval_data_root", None) or args.data_root
        evaluation = samples_from_dataset(
            load_split(name, root, args.eval_split, skip_bad=args.skip_bad, default="test")
        )
        if name not in datasets:
            datasets.append(name)
    if evaluation is not None and not evaluation:
        raise DataError("the evaluation set is empty")
    return TrainingData(train, evaluation, id2label, modality, task, datasets)
