"""Options shared by several commands: labels, dataset options, data sources and the training recipe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..data.sources import DataOptions
from ..data.specs import DATASETS
from ..errors import DataError, LoSamError
from ..labels import parse_label_names
from ..training import TrainingConfig
from .options import add_dataclass_options, given

#: TrainingConfig fields the command line does not set directly (derived from the data and --labels)
DERIVED_TRAINING_FIELDS = ("id2label", "train_ids", "eval_ids", "datasets", "output_dir")


def parse_labels(text: str) -> dict[int, str]:
    """``--labels``: the library's one label rule (:func:`losam_peft.labels.parse_label_names`), as argparse's error."""
    try:
        return parse_label_names(text)
    except LoSamError as err:
        raise argparse.ArgumentTypeError(f"--labels {text!r}: {err}") from None


def add_label_options(parser) -> None:
    parser.add_argument("--num-labels", type=int, default=None, help="number of classes incl. background")
    parser.add_argument("--labels", type=parse_labels, default=None, help="class names, e.g. background,vessel")


# -- dataset options: every variant any dataset knows, plus the engine's options ----------------------------------
def _variant_names() -> dict[str, list]:
    names: dict[str, list] = {}
    for spec in DATASETS.values():
        for option, choices in spec.variants.items():
            names.setdefault(option, [])
            names[option].extend(k for k in choices if k not in names[option])
    return names


def _value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text.strip()


def add_dataset_options(parser) -> None:
    """``--subset``, ``--label``, ``--projection``, ``--include-optic-disc`` …, ``--mask-threshold``,
    ``--derive-fov`` and the generic ``--dataset-option KEY=VALUE``; a dataset refuses options it does not know."""
    group = parser.add_argument_group("dataset options (passed to the dataset loader; unknown ones are an error)")
    for option, choices in sorted(_variant_names().items()):
        flag = "--" + option.replace("_", "-")
        if all(isinstance(c, bool) for c in choices):
            group.add_argument(flag, dest=f"ds_{option}", action="store_true", default=argparse.SUPPRESS,
                               help=f"dataset variant {option}=True")  # fmt: skip
        else:
            shown = ", ".join(str(c) for c in choices)
            group.add_argument(flag, dest=f"ds_{option}", default=argparse.SUPPRESS, metavar="VALUE",
                               help=f"dataset variant ({shown})")  # fmt: skip
    group.add_argument("--mask-threshold", dest="ds_mask_threshold", type=float, default=argparse.SUPPRESS,
                       help="accept lossy binary masks: value >= threshold is foreground")  # fmt: skip
    group.add_argument("--derive-fov", dest="ds_derive_fov", action="store_true", default=argparse.SUPPRESS,
                       help="derive a field-of-view mask from the image where the dataset has none")  # fmt: skip
    group.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other dataset option, e.g. subset=DVC (ROSE-1); repeatable")  # fmt: skip


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {key[3:]: value for key, value in vars(args).items() if key.startswith("ds_")}
    for item in getattr(args, "dataset_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--dataset-option takes KEY=VALUE, got {item!r}")
        options[key.strip()] = _value(value)
    return options


# -- training data and recipe ----------------------------------------------------------------------------------------
def add_data_options(parser, *, evaluation: bool = True) -> None:
    train = parser.add_argument_group("training data (one of)")
    add_dataclass_options(
        train, DataOptions,
        only=["train_image", "train_mask", "train_dir", "dataset", "data_root", "split", "shots", "shot_seed",
              "skip_bad"],
    )  # fmt: skip
    add_dataset_options(parser)
    if evaluation:
        val = parser.add_argument_group(
            "validation data (optional; chooses the saved step; without it the final step is saved)"
        )
        add_dataclass_options(
            val, DataOptions,
            only=["val_image", "val_mask", "val_dir", "val_dataset", "val_data_root", "val_split", "val_fraction"],
        )  # fmt: skip
        ev = parser.add_argument_group("evaluation data (optional; monitoring and the final report, never selection)")
        add_dataclass_options(
            ev, DataOptions, only=["eval_image", "eval_mask", "eval_dir", "eval_dataset", "eval_data_root", "eval_split"]
        )


def data_options(args: argparse.Namespace) -> DataOptions:
    names = [f for f in DataOptions.__dataclass_fields__ if f != "dataset_options"]
    return DataOptions(**given(args, names), dataset_options=dataset_options(args))


def add_training_options(parser) -> list[str]:
    parser.add_argument("--output-dir", required=True, help="where the adapter, card, metrics and logs go")
    add_label_options(parser)
    add_data_options(parser)
    recipe = parser.add_argument_group("recipe and run (defaults: TrainingConfig; a preset overrides some)")
    names = add_dataclass_options(recipe, TrainingConfig, exclude=DERIVED_TRAINING_FIELDS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return names


def training_config(args: argparse.Namespace, data) -> TrainingConfig:
    """The ``TrainingConfig`` of the command line and the data it loaded."""
    id2label = args.labels or data.id2label
    if args.num_labels is not None:
        if id2label is not None and len(id2label) != args.num_labels:
            raise DataError(f"--num-labels {args.num_labels} disagrees with the labels {list(id2label.values())}")
        id2label = id2label or {i: ("background" if i == 0 else f"class_{i}") for i in range(args.num_labels)}
    names = [f for f in TrainingConfig.__dataclass_fields__ if f not in DERIVED_TRAINING_FIELDS]
    values = given(args, names)
    values.setdefault("modality", None)
    values.setdefault("task", None)
    values["modality"] = values["modality"] or data.modality
    values["task"] = values["task"] or data.task
    if "base" in values and Path(values["base"]).expanduser().exists():
        values["base"] = str(Path(values["base"]).expanduser().resolve())  # portable: not relative to the cwd
    if values.get("resume_from"):
        values["resume_from"] = str(Path(values["resume_from"]).expanduser().resolve())
    return TrainingConfig(
        output_dir=args.output_dir,
        id2label=id2label,
        train_ids=[s.id for s in data.train],
        eval_ids=[s.id for s in data.eval] if data.eval else [],
        datasets=data.datasets,
        **values,
    )


def num_labels_of(args: argparse.Namespace) -> int | None:
    return len(args.labels) if args.labels else args.num_labels
