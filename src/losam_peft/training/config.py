"""The settings of a training run (:class:`TrainingConfig`, the one place a training default lives), its presets and
its result.

Every field carries ``metadata``: ``help`` (one line, as the command line shows it), and where they apply
``choices`` (the allowed values) and ``min``/``max`` (inclusive) or ``above`` (exclusive lower bound). The command
line builds its options from these (``losam_peft.cli.options.add_dataclass_options``); :class:`TrainingConfig`
checks the same rules itself, so a run built in Python is held to them too.

A preset is a named set of field values (:data:`PRESETS`). It fills in every field the caller left out (or gave as
``None``); whatever the caller set explicitly wins. The ``default`` preset changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

from ..errors import TrainingError
from ..image_processing_losam import MODES
from ..labels import normalise_id2label
from ..validation import out_of_range
from .samples import JITTERS

__all__ = [
    "DEFAULT_EPOCHS",
    "MIXED_PRECISION",
    "PRESETS",
    "NonFiniteLoss",
    "TrainingConfig",
    "TrainingResult",
]

#: Epochs of a run that names neither ``epochs`` nor ``max_steps`` (nor a preset that sets them).
DEFAULT_EPOCHS = 32
#: Accelerate's ``mixed_precision`` values.
MIXED_PRECISION = ("no", "fp16", "bf16")

#: Named override sets of :class:`TrainingConfig` fields; a preset fills in the fields the caller did not set.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "default": MappingProxyType({}),
        # the reference implementation's recipe: a 1024 plain square resize with mean/std 0.5, its colour jitter and
        # flips, cross-entropy over all pixels, 32 epochs of batch 1, fp16 autocast with loss scaling (on a CUDA
        # device; elsewhere bf16, with a note, since Accelerate has no fp16 autocast or loss scaler there)
        "paper": MappingProxyType({
            "image_size": 1024, "epochs": 32, "batch_size": 1, "processor_mode": "paper", "jitter": "reference",
            "ignore_outside_fov": False, "mixed_precision": "fp16",
        }),  # fmt: skip
    }
)


def _help(text: str, name: str, default: str) -> str:
    """``text`` with the default of field ``name`` described in words and the value each preset gives it."""
    notes = [f"; preset {preset}: {values[name]}" for preset, values in PRESETS.items() if name in values]
    return f"{text} (default: {default}{''.join(notes)})"


def _records_given_fields(cls):
    """Let each instance know which fields its caller passed (``_given``), so that a preset fills in only the others.

    ``dataclasses.replace`` passes every field, so a replaced config keeps its values."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        self._given = frozenset(names[: len(args)]).union(kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


class NonFiniteLoss(TrainingError):
    """The loss (or a weight about to be checkpointed) stopped being finite at ``step``."""

    def __init__(self, step: int, value: float, what: str = "the loss"):
        super().__init__(f"{what} became {value} at step {step}")
        self.step, self.value = step, value


@_records_given_fields
@dataclass
class TrainingConfig:
    """Everything a run depends on; written to ``train_config.json``. See the module docstring for the metadata."""

    output_dir: str = field(
        metadata={"help": "where the adapter, its image processor, model card, metrics, logs and checkpoint go"}
    )
    base: str = field(
        default="facebook/sam-vit-base", metadata={"help": "the SAM checkpoint to adapt: a Hub id or a local folder"}
    )
    id2label: dict | None = field(
        default=None,
        metadata={"help": "class names by id, 0 the background (default: the base model's, else background, "
                          "foreground)"},
    )  # fmt: skip
    preset: str = field(
        default="default",
        metadata={"help": "named set of recipe values that fills in the settings not given", "choices": list(PRESETS)},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": _help("encoder input size in pixels", "image_size", "the base model's"), "min": 1},
    )  # fmt: skip
    epochs: int | None = field(
        default=None,
        metadata={"help": _help("passes over the training images", "epochs",
                                f"{DEFAULT_EPOCHS} unless max_steps is given"), "min": 1},
    )  # fmt: skip
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer updates in all; takes precedence over epochs (default: epochs × updates per "
                          "epoch)", "min": 1},
    )  # fmt: skip
    batch_size: int = field(
        default=1, metadata={"help": _help("training images per process and micro-step", "batch_size", "1"), "min": 1}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-steps accumulated into one optimizer update", "min": 1}
    )
    learning_rate: float = field(
        default=0.05, metadata={"help": "initial SGD learning rate of the poly schedule", "above": 0.0}
    )
    poly_power: float = field(
        default=0.9, metadata={"help": "power of the poly schedule lr × (1 − step/max_steps)^power", "min": 0.0}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "min": 0.0, "below": 1.0})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay", "min": 0.0})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    mixed_precision: Optional[str] = field(
        default=None,
        metadata={"help": "autocast precision of training and its evaluations (Accelerate's mixed_precision); "
                          "unset: what Accelerate decides (accelerate launch --mixed_precision, accelerate config, "
                          "ACCELERATE_MIXED_PRECISION; else no). The precision used is recorded",
                  "choices": list(MIXED_PRECISION)},
    )  # fmt: skip
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each encoder block's activations in the backward pass instead of keeping them "
                          "(less memory, about a third more time; for vit_h on 24 GB cards)"},
    )  # fmt: skip
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the model before training (slow first steps, faster after)"}
    )
    processor_mode: str = field(
        default="sam",
        metadata={"help": _help("image geometry: sam keeps the aspect ratio (longest side resized, SAM's mean/std, "
                                "zero padding), paper is a plain square resize with mean/std 0.5", "processor_mode",
                                "sam"),
                  "choices": list(MODES)},
    )  # fmt: skip
    augment: bool = field(
        default=True, metadata={"help": "colour jitter (see jitter) and random horizontal/vertical flips"}
    )
    jitter: str = field(
        default="bcs",
        metadata={"help": _help("colour jitter: bcs scales brightness, contrast and saturation by U(0.8, 1.2) on "
                                "every draw; reference is the authors' (albumentations ColorJitter: those three and a "
                                "hue shift of up to 0.2, in random order, luma grey, on half the draws)", "jitter",
                                "bcs"),
                  "choices": list(JITTERS)},
    )  # fmt: skip
    ignore_outside_fov: bool = field(
        default=True,
        metadata={"help": _help("leave pixels outside the field of view out of the loss (the reference counts all "
                                "pixels)", "ignore_outside_fov", "True")},
    )  # fmt: skip
    seed: int = field(
        default=0,
        metadata={"help": "seed of the initial weights, the sample order and the augmentation", "min": 0,
                  "max": 2**32 - 1},
    )  # fmt: skip
    reduction: int = field(default=4, metadata={"help": "channel reduction r of the LoSAM prompt layers", "min": 1})
    eval_every: int = field(
        default=0,
        metadata={"help": "evaluate every N steps and keep the best adapter (0: evaluate once, at the end)", "min": 0},
    )
    save_every: int = field(
        default=0,
        metadata={"help": "write the resume checkpoint every N steps (0: every eval_every steps, else 4 times a run)",
                  "min": 0},
    )  # fmt: skip
    log_with: str = field(
        default="auto",
        metadata={"help": "experiment tracker: auto (TensorBoard when it is installed), none, or an Accelerate "
                          "tracker name (tensorboard, wandb, ...)"},
    )  # fmt: skip
    fast_path: bool = field(default=True, metadata={"help": "the encoder's fused-attention fast path"})
    modality: str | None = field(
        default=None, metadata={"help": "imaging modality recorded in the adapter and its card (e.g. fundus)"}
    )
    task: str | None = field(
        default=None, metadata={"help": "segmentation task recorded in the adapter and its card (e.g. vessels)"}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "licence of the adapter, stated in its model card (a Hub licence id such as apache-2.0 or "
                          "cc-by-nc-4.0; default: none is claimed)"},
    )  # fmt: skip
    resume_from: str | None = field(
        default=None,
        metadata={"help": "continue from this checkpoint folder (or a run's output folder); the settings must be the "
                          "run's, except the learning rate, which may change (recorded)"},
    )  # fmt: skip
    overwrite: bool = field(
        default=False,
        metadata={"help": "train into an output folder that already holds an adapter or a checkpoint, replacing them"},
    )
    train_ids: list = field(default_factory=list, metadata={"help": "ids of the training images (recorded)"})
    eval_ids: list = field(default_factory=list, metadata={"help": "ids of the evaluation images (recorded)"})
    val_ids: list = field(
        default_factory=list, metadata={"help": "ids of the validation images that choose the saved step (recorded)"}
    )
    datasets: list = field(default_factory=list, metadata={"help": "names of the datasets trained on (recorded)"})

    def __post_init__(self):
        _check_value(self.__dataclass_fields__["preset"], self.preset)
        given = getattr(self, "_given", frozenset())
        for name, value in PRESETS[self.preset].items():
            if name not in given or getattr(self, name) is None:
                setattr(self, name, value)
        if self.epochs is None and self.max_steps is None:
            self.epochs = DEFAULT_EPOCHS
        for f in dataclasses.fields(self):
            _check_value(f, getattr(self, f.name))
        if self.id2label is not None:
            self.id2label = normalise_id2label(self.id2label)

    def resume_key(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it."""
        keep = (
            "base", "id2label", "preset", "image_size", "epochs", "max_steps", "batch_size",
            "gradient_accumulation_steps", "learning_rate", "poly_power", "momentum", "weight_decay", "nesterov",
            "processor_mode", "augment", "jitter", "ignore_outside_fov", "seed", "reduction", "train_ids",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keep}

    #: resume settings a resuming run may change (the change is recorded): lowering the learning rate is the way on
    #: after a non-finite loss
    RESUME_MAY_CHANGE = ("learning_rate",)


def _check_value(f: dataclasses.Field, value) -> None:
    """The field's ``choices`` and range metadata, as the command line checks them."""
    problem = out_of_range(value, f.metadata)
    if problem:
        raise TrainingError(f"{f.name} {problem}")


@dataclass
class TrainingResult:
    """What :func:`losam_peft.training.train` did: the steps run, the best evaluated step and its metrics."""

    output_dir: Path
    steps: int
    best_step: int | None
    metrics: dict | None
    history: list
    seconds: float
    interrupted: bool = False
    #: the signal that interrupted the run (2 for Ctrl-C, 15 for SIGTERM), when it was interrupted
    signal: int | None = None
