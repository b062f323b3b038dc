"""``losam demo``: the whole one-shot workflow on synthetic retinas, with no download.

A small SAM-style encoder is built from the bundled ``demo`` configuration with *random* weights (real use loads
``facebook/sam-vit-base``; the Hub cannot be assumed here) and saved as the base checkpoint. One synthetic colour
fundus photograph with its exact vessel mask is the training shot; a held-out set of other synthetic retinas measures
the result, before and after training, with :func:`losam_peft.evaluation.evaluate_adapter` (as training's own
evaluations are). The demo writes the adapter (loadable with ``LoSamPipeline.from_pretrained``), ``metrics.json``,
overlay PNGs (image | ground truth | prediction, :func:`losam_peft.visualization.comparison_panel`) and the loss
curve.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_save, atomic_write_json
from .data.samples import Sample
from .data.synthetic import derive_seed, fundus
from .errors import TrainingError
from .evaluation import evaluate_adapter
from .image_processing_losam import LoSamImageProcessor, to_rgb8
from .metrics import format_paper_table, mean_foreground_dice
from .modeling_losam import SamForSemanticSegmentation, sam_vision_config
from .pipeline import LoSamPipeline
from .training import TrainingConfig, train
from .training.loop import RUN_FILES
from .visualization import comparison_panel

DEMO_STEPS = 250
DEMO_HELD_OUT = 6
DEMO_LEARNING_RATE = 0.05
# thicker vessels than the generator's default so that the tiny encoder's 1/8-resolution tokens can carry them
DEMO_FUNDUS = dict(min_width=2.5, max_width=7.0)
# the demo trains in float32 (TrainingConfig's mixed_precision "no"): evaluate the same way
DEMO_DTYPE = "fp32"
HELD_OUT_NAME = "the held-out synthetic retinas"


def _synthetic_fundus(size: int, seed: int, index: int) -> Sample:
    sample = fundus(size, derive_seed(seed, index), **DEMO_FUNDUS)
    return Sample(sample.image, sample.mask.astype(np.uint8), f"synthetic_fundus_{index:03d}", sample.fov)


def _evaluate(pipe: LoSamPipeline, samples, id2label) -> dict:
    return evaluate_adapter(
        pipe, samples, id2label, None, progress=False, num_overlays=0, plot=False, dataset_name=HELD_OUT_NAME
    )


def _save_overlays(pipe: LoSamPipeline, samples, results: dict, folder: Path) -> None:
    """image | ground truth | prediction (inside the FOV) of every held-out sample, titled with its Dice."""
    folder.mkdir(parents=True, exist_ok=True)
    predictions = pipe.predict_loaded([sample.image for sample in samples])
    for sample, prediction, entry in zip(samples, predictions, results["per_image"]):
        dice = entry.get("mean_foreground_dice")
        shown = "undefined" if dice is None else f"{dice:.3f}"
        canvas = comparison_panel(
            to_rgb8(sample.image),
            sample.label,
            prediction.label_map,
            title=f"{sample.id}: vessel Dice {shown}",
            num_labels=pipe.num_labels,
            fov=sample.fov,
            style="mask",
            captions=("image", "ground truth", "prediction (inside the FOV)"),
        )
        atomic_save(folder / f"{sample.id}.png", canvas.save)


def run_demo(
    output_dir: str | os.PathLike = "losam-demo",
    *,
    steps: int | None = None,
    seed: int = 0,
    size: int = 256,
    held_out: int = DEMO_HELD_OUT,
    progress: bool = True,
) -> dict:
    """Run the demo; returns a summary with the held-out Dice before and after training and the output paths."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    holds_run = any((output_dir / name).exists() for name in RUN_FILES)
    if holds_run and not (output_dir / "base-encoder").is_dir():
        raise TrainingError(
            f"{output_dir} holds an adapter that the demo did not write (no base-encoder/ beside it); the demo "
            "replaces only its own output: choose another output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or DEMO_STEPS
    id2label = {0: "background", 1: "vessel"}
    say = print if progress else (lambda *a, **k: None)
    say(
        "losam demo: a small SAM-style encoder with RANDOM weights (bundled config 'demo', no download), one synthetic "
        "fundus photograph as the training shot, and held-out synthetic retinas for evaluation.\n"
        "Real use loads facebook/sam-vit-base instead: see README.md."
    )

    torch.manual_seed(seed)
    config = sam_vision_config("demo", id2label=id2label, image_size=size)
    base_dir = output_dir / "base-encoder"
    SamForSemanticSegmentation(config).save_pretrained(base_dir)
    base = SamForSemanticSegmentation.from_pretrained(base_dir)

    train_samples = [_synthetic_fundus(size, seed, 0)]
    eval_samples = [_synthetic_fundus(size, seed, 1 + i) for i in range(held_out)]
    processor = LoSamImageProcessor(image_size=size)
    untrained = _evaluate(LoSamPipeline(base, processor, dtype=DEMO_DTYPE, id2label=id2label), eval_samples, id2label)

    result = train(
        TrainingConfig(
            output_dir=str(output_dir),
            base=str(base_dir),
            id2label=id2label,
            max_steps=steps,
            learning_rate=DEMO_LEARNING_RATE,
            eval_every=max(1, steps // 4),
            seed=seed,
            log_with="none",
            modality="fundus",
            task="vessels",
            datasets=["synthetic-fundus"],
            overwrite=holds_run,  # the demo's own earlier output
        ),
        train_samples,
        eval_samples,
        base_model=base,
        progress=progress,
    )

    # the adapter as a user loads it: from the folder, onto a fresh copy of the saved base encoder
    trained_pipe = LoSamPipeline.from_pretrained(output_dir, base=str(base_dir), device="cpu", dtype=DEMO_DTYPE)
    trained = _evaluate(trained_pipe, eval_samples, id2label)
    overlays = output_dir / "overlays"
    _save_overlays(trained_pipe, eval_samples, trained, overlays)

    summary = {
        "held_out_dice": mean_foreground_dice(trained),
        "untrained_head_dice": mean_foreground_dice(untrained),
        "train_steps": result.steps,
        "best_step": result.best_step,
        "seconds": round(time.perf_counter() - started, 1),
        "encoder": "random weights (bundled 'demo' config)",
        "adapter": str(output_dir),
        "metrics": str(output_dir / "metrics.json"),
        "overlays": str(overlays),
        "loss_curve": str(output_dir / "loss_curve.png"),
    }
    atomic_write_json(output_dir / "demo_summary.json", summary)
    say(format_paper_table(trained, title=f"held-out synthetic retinas ({held_out} images)"))
    say(
        f"held-out vessel Dice {summary['held_out_dice']:.3f} "
        f"(untrained head: {summary['untrained_head_dice'] or 0:.3f}) after {result.steps} steps, "
        f"{summary['seconds']:.0f} s\n"
        f"adapter + model card: {output_dir}/ (adapter_model.safetensors, adapter_config.json, README.md)\n"
        f"metrics:              {summary['metrics']}\n"
        f"overlays:             {overlays}/ (image | ground truth | prediction)\n"
        f"loss curve:           {summary['loss_curve']}\n"
        f"load it:              LoSamPipeline.from_pretrained({str(output_dir)!r})"
    )
    return summary
