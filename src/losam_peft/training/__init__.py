"""One-shot and few-shot training of a LoSAM adapter with Accelerate.

The recipe, as the defaults of :class:`TrainingConfig` set it: SGD with momentum 0.9, Nesterov and weight decay 5e-4;
a poly learning rate 0.05 × (1 − step/max_steps)^0.9 per optimizer update; pixel-wise cross-entropy (mask value
255, the padding and pixels outside the field of view are ignored); batch size 1 for 32 epochs unless ``max_steps``
is given; float32 (``mixed_precision="bf16"``/``"fp16"`` autocasts the forward pass where Accelerate supports it);
colour jitter and random horizontal/vertical flips of every drawn image. Images keep their aspect ratio (longest
side resized to the encoder's input size, SAM's own mean/std, zero padding). ``preset="paper"`` sets a plain
1024×1024 square resize with mean/std 0.5 and 32 epochs wherever those settings are not given (:data:`PRESETS`).

Images are prepared by the :class:`~losam_peft.image_processing_losam.LoSamImageProcessor` written with the
adapter. With evaluation data, the model is evaluated by :func:`losam_peft.evaluation.evaluate_adapter` (the
package's one evaluation) every ``eval_every`` steps and at the end, and the adapter of the best mean foreground
Dice is the one written; without, the final one is.

Runs unchanged under ``accelerate launch`` (multi-process data parallel, AMP). Randomness is derived from
``seed`` and the step number alone — the order of samples in epoch ``e`` and the augmentation of each drawn sample —
so a resumed run continues exactly as the uninterrupted one would, and a seeded CPU run is repeatable.

Outputs in ``output_dir``: the adapter (``adapter_config.json``, ``adapter_model.safetensors``), its image
processor, a model card (``README.md``), ``metrics.json``, ``train_config.json``, ``history.json``,
``loss_curve.png``, ``checkpoint/`` (resume state) and ``logs/`` (trackers).

The modules: :mod:`.config` (settings, presets, result), :mod:`.samples` (the prepared samples, their augmentation
and order), :mod:`.loop` (:func:`train`) and :mod:`.checkpoint` (the resume state).
"""

from __future__ import annotations

from ..errors import TrainingError
from ..metrics import mean_foreground_dice
from .checkpoint import CHECKPOINT_DIR, CHECKPOINT_META, CHECKPOINT_WEIGHTS
from .config import DEFAULT_EPOCHS, MIXED_PRECISION, PRESETS, NonFiniteLoss, TrainingConfig, TrainingResult
from .loop import poly_lr, train
from .samples import PreparedSamples, augment_pair, check_label_values, sample_stream

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_META",
    "CHECKPOINT_WEIGHTS",
    "DEFAULT_EPOCHS",
    "MIXED_PRECISION",
    "PRESETS",
    "NonFiniteLoss",
    "PreparedSamples",
    "TrainingConfig",
    "TrainingError",
    "TrainingResult",
    "augment_pair",
    "check_label_values",
    "mean_foreground_dice",
    "poly_lr",
    "sample_stream",
    "train",
]
