"""LoSAM against the usual ways of adapting SAM, trained on the same shots by the same training loop.

    losam compare --base SAM --train-image IMG --train-mask MASK --eval-dir DIR --output-dir OUT
    losam compare ... --methods losam,lora            # any subset

Four methods, each trained by :func:`losam_peft.training.train` with the same shots, seed, recipe and number of
steps, then reloaded from what it saved and evaluated by :func:`losam_peft.evaluation.evaluate_adapter`:

============  =====================================================================================================
``losam``     the paper's prompt layer before every encoder block + the segmentation head (a LoSAM PEFT adapter)
``head``      head-only tuning: SAM frozen, no prompt layers; only the segmentation head is trained and saved
``lora``      PEFT's own ``LoraConfig`` on the encoder attention's ``qkv`` projection (rank 8) + the head
``full``      full fine-tuning: every weight of the encoder and the head is trained and saved
============  =====================================================================================================

The result is one table with the mean foreground Dice, the trainable parameters, the size on disk of what each
method has to ship (its safetensors files) and the training time, printed as markdown and written to
``compare.json`` / ``compare.csv``. Every method's folder can be evaluated again with ``losam evaluate --adapter``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_csv, atomic_write_json
from .baselines import (  # noqa: F401  (re-exported: the names of earlier releases)
    HEAD_WEIGHTS,
    METHOD_FILE,
    METHOD_TITLES,
    METHODS,
    RECIPE_KEYS,
    MethodOptions,
    check_method,
    load_method_model,
    load_method_pipeline,
    method_record,
    prepare_method,
    save_function,
)
from .errors import DataError, LoSamValueError
from .evaluation import evaluate_adapter
from .metrics import METRIC_NAMES
from .training import TrainingError, mean_foreground_dice, train

__all__ = [
    "METHODS",
    "MethodOptions",
    "compare_methods",
    "format_compare_table",
    "load_method_model",
    "load_method_pipeline",
    "parse_methods",
    "prepare_method",
    "save_function",
    "train_method",
]


# -- training every method through training.train -----------------------------------------------------------------------
def train_method(method: str, config, train_samples, *, options: MethodOptions | None = None, progress: bool = True):
    """Train ``method`` with ``training.train`` on ``train_samples``; returns ``(TrainingResult, info)`` where
    ``info`` holds the trainable and total parameter counts."""
    options = options or MethodOptions()
    info: dict[str, Any] = {}

    def prepare(base_model, run_config):
        model = prepare_method(method, base_model, run_config, options)
        info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # PEFT keeps the original head beside its trained copy (modules_to_save): count the model as it is used
        info["total_parameters"] = sum(
            p.numel() for name, p in model.named_parameters() if ".original_module." not in name
        )
        return model

    save = save_function(method, config, options)
    result = train(config, train_samples, None, progress=progress, prepare_model=prepare, save_model=save)
    if method == "losam":
        record = method_record(method, None, config, options)
        atomic_write_json(Path(config.output_dir) / METHOD_FILE, record)
    return result, info


def _warm_up_imports() -> None:
    """Import what every training run imports once, so that the first method's time does not include it."""
    import accelerate  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def _weights_bytes(folder: Path) -> tuple[int, list[str]]:
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return sum(p.stat().st_size for p in files), [p.name for p in files]


def compare_methods(
    config,
    train_samples: Sequence,
    eval_samples,
    *,
    methods: Sequence[str] = METHODS,
    options: MethodOptions | None = None,
    id2label: Mapping | None = None,
    device=None,
    dtype=None,
    batch_size: int = 1,
    keep_checkpoints: bool = False,
    progress: bool = True,
) -> dict:
    """Train each of ``methods`` on the same ``train_samples`` with the same recipe, evaluate on ``eval_samples``.

    ``config`` is the ``TrainingConfig`` every method shares; method ``m`` is written to ``config.output_dir/m``.
    ``config.base`` must be a loadable SAM checkpoint (each method starts from a fresh copy of it). A method whose
    training fails (e.g. the loss diverges) is reported with its error and the others still run. Returns the
    comparison (also written to ``compare.json`` and ``compare.csv`` in ``config.output_dir``).
    """
    options = options or MethodOptions()
    methods = [check_method(m) for m in methods]
    if not methods:
        raise LoSamValueError("no method to compare")
    if len(set(methods)) != len(methods):
        raise LoSamValueError(f"methods listed twice: {methods}")
    if not train_samples:
        raise DataError("the training set is empty")
    if eval_samples is None or len(eval_samples) == 0:
        raise DataError("the comparison needs evaluation data (the evaluation set is empty)")
    if getattr(config, "resume_from", None):
        raise LoSamValueError("losam compare trains every method from scratch; resume_from is not supported")
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _warm_up_imports()
    train_ids = [s.id for s in train_samples]
    if hasattr(eval_samples, "column_names") and "id" in eval_samples.column_names:
        eval_ids = [str(i) for i in eval_samples["id"]]
    else:
        eval_ids = [str(getattr(s, "id", "") or i) for i, s in enumerate(eval_samples)]
    rows = []
    for method in methods:
        run_config = dataclasses.replace(
            config,
            output_dir=str(root / method),
            train_ids=list(train_ids),
            eval_ids=list(eval_ids),
            eval_every=0,
            log_with="none" if config.log_with == "auto" else config.log_with,
        )
        row: dict[str, Any] = {"method": method, "title": METHOD_TITLES[method], "output_dir": run_config.output_dir}
        if progress:
            print(f"== {method}: {METHOD_TITLES[method]}", flush=True)
        try:
            result, info = train_method(method, run_config, train_samples, options=options, progress=progress)
        except (TrainingError, torch.OutOfMemoryError) as err:
            row.update(status="failed", error=f"{type(err).__name__}: {err}")
            rows.append(row)
            continue
        if not keep_checkpoints:
            shutil.rmtree(Path(run_config.output_dir) / "checkpoint", ignore_errors=True)
        size, files = _weights_bytes(Path(run_config.output_dir))
        pipe = load_method_pipeline(run_config.output_dir, device=device, dtype=dtype)
        metrics = evaluate_adapter(
            pipe,
            eval_samples,
            id2label,
            Path(run_config.output_dir) / "evaluation",
            batch_size=batch_size,
            num_overlays=0,
            plot=False,
            progress=False,
            dataset_name="the evaluation set",
        )
        dice = mean_foreground_dice(metrics)
        total = info.get("total_parameters") or 0
        row.update(
            status="ok",
            dice=dice,
            per_class={
                str(entry["name"]): {m: entry.get(m) for m in METRIC_NAMES}
                for key, entry in metrics["per_class"].items()
                if int(key) != 0
            },
            trainable_parameters=info.get("trainable_parameters"),
            total_parameters=total,
            trainable_percent=(100.0 * info["trainable_parameters"] / total) if total else None,
            file_bytes=size,
            files=files,
            train_seconds=round(result.seconds, 3),
            steps=result.steps,
        )
        rows.append(row)

    comparison = {
        "methods": rows,
        "train_ids": train_ids,
        "eval_ids": eval_ids,
        "base": config.base,
        "seed": config.seed,
        "steps": next((r["steps"] for r in rows if r.get("steps") is not None), None),
        "recipe": {k: getattr(config, k) for k in RECIPE_KEYS},
        "lora": dataclasses.asdict(options),
    }
    comparison["table"] = format_compare_table(comparison)
    atomic_write_json(root / "compare.json", comparison)
    columns = ["method", "title", "status", "dice", "trainable_parameters", "total_parameters", "trainable_percent",
               "file_bytes", "train_seconds", "steps", "output_dir", "error"]  # fmt: skip
    atomic_write_csv(root / "compare.csv", rows, columns)
    return comparison


# -- formatting ---------------------------------------------------------------------------------------------------------
def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_compare_table(comparison: Mapping[str, Any]) -> str:
    """Markdown: ``Method | Dice (%) | Trainable params | Adapter file | Training time``."""
    lines = [
        "| Method | Dice (%) | Trainable params | Adapter file | Training time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in comparison["methods"]:
        if row.get("status") != "ok":
            lines.append(f"| {row['title']} | failed: {row.get('error', '')} | - | - | - |")
            continue
        dice = "n/a" if row.get("dice") is None else f"{100 * row['dice']:.2f}"
        share = row.get("trainable_percent")
        params = f"{row['trainable_parameters']:,}" + (f" ({share:.2f}%)" if share is not None else "")
        lines.append(
            f"| {row['title']} | {dice} | {params} | {_size(row.get('file_bytes'))} | {row['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_methods(text: str) -> list[str]:
    """``"losam,head-only"`` -> ``["losam", "head"]``; unknown names raise ``LoSamValueError``."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    aliases = {"head-only": "head", "head_only": "head", "full-ft": "full", "full_finetuning": "full"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise LoSamValueError(f"methods must be a comma-separated subset of {','.join(METHODS)}, got {text!r}")
    return names
