"""The resume checkpoint: the trained weights, the SGD momentum and the run's progress, replaced atomically.

``CHECKPOINT_DIR/CHECKPOINT_WEIGHTS`` holds the trainable weights (``model.*``, with the buffers of trained modules)
and the momentum buffers (``momentum.*``); ``CHECKPOINT_DIR/CHECKPOINT_META`` the step, the best evaluation so far,
the history and the settings a resuming run must share (:meth:`TrainingConfig.resume_key`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..adapters import safetensors_problem
from ..errors import TrainingError
from .config import NonFiniteLoss, TrainingConfig

__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_META", "CHECKPOINT_WEIGHTS", "read_checkpoint", "restore_checkpoint",
           "trainable_state", "write_checkpoint"]  # fmt: skip

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_WEIGHTS = "state.safetensors"
CHECKPOINT_META = "state.json"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable weights plus the buffers of trained modules (the head's BatchNorm statistics)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if name in trainable or "modules_to_save" in name or "losam_prompt" in name
    }


def write_checkpoint(path: Path, model, optimizer, config: TrainingConfig, state: dict) -> None:
    """Atomically replace ``path`` with the current state; a state with non-finite weights is never written."""
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    broken = [k for k, v in tensors.items() if v.dtype.is_floating_point and not torch.isfinite(v).all()]
    if broken:
        raise NonFiniteLoss(state["step"], float("nan"), what=f"weight {broken[0][len('model.') :]}")
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{name}"] = buffer.detach().cpu().contiguous()
    meta = {
        "step": state["step"],
        "best": state.get("best"),
        "best_step": state.get("best_step"),
        "history": state["history"],
        "config": config.resume_key(),
        "changes": list(state.get("changes", [])),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(".checkpoint-*"):  # staging folders of a run that was killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=path.parent))
    try:
        save_file(tensors, staging / CHECKPOINT_WEIGHTS)
        (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=1))
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(staging, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_checkpoint(path: Path, config: TrainingConfig) -> dict:
    """``{"path", "meta"}`` of the checkpoint at ``path`` (a checkpoint folder or a run's output folder; an
    interrupted replacement is recovered from ``.old``), refused when it was made with other settings."""
    if path.is_dir() and not (path / CHECKPOINT_META).is_file() and (path / CHECKPOINT_DIR).is_dir():
        path = path / CHECKPOINT_DIR
    if not (path / CHECKPOINT_META).is_file() or not (path / CHECKPOINT_WEIGHTS).is_file():
        old = path.with_name(path.name + ".old")
        if (old / CHECKPOINT_META).is_file():
            path = old
        else:
            raise TrainingError(f"{path}: no training checkpoint there ({CHECKPOINT_META} and {CHECKPOINT_WEIGHTS})")
    meta_path, weights_path = path / CHECKPOINT_META, path / CHECKPOINT_WEIGHTS
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise TrainingError(f"{meta_path}: the checkpoint's state is not valid JSON ({err}); it is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("config"), dict):
        raise TrainingError(f"{meta_path}: not a training checkpoint's state (no step and settings); it is damaged")
    problem = safetensors_problem(weights_path)
    if problem:
        raise TrainingError(f"{weights_path}: the checkpoint's weights are damaged: {problem}")
    saved, current = meta["config"], json.loads(json.dumps(config.resume_key()))
    # settings left unspecified (None, or no recorded training ids) take the checkpoint's values; settings the
    # checkpoint's release did not record yet are not compared
    differing = sorted(k for k in current if k in saved and current[k] not in (None, []) and saved[k] != current[k])
    changes = [{k: [saved[k], current[k]]} for k in differing if k in TrainingConfig.RESUME_MAY_CHANGE]
    differing = [k for k in differing if k not in TrainingConfig.RESUME_MAY_CHANGE]
    if differing:
        raise TrainingError(
            f"{path}: the checkpoint was made with other settings ({', '.join(differing)}); resume with the same "
            f"command line (only {', '.join(TrainingConfig.RESUME_MAY_CHANGE)} may change), or start a new run"
        )
    return {"path": path, "meta": meta, "changes": changes}


def restore_checkpoint(checkpoint: dict, model, optimizer) -> tuple[int, float | None, int | None, list]:
    """Load the checkpoint's weights and momentum into ``model`` and ``optimizer``; ``(step, best, best_step,
    history)``."""
    tensors = load_file(checkpoint["path"] / CHECKPOINT_WEIGHTS)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    result = model.load_state_dict(model_state, strict=False)
    if result.unexpected_keys:
        raise TrainingError(f"{checkpoint['path']}: checkpoint does not fit this model ({result.unexpected_keys[:3]})")
    for name, param in model.named_parameters():
        buffer = tensors.get(f"momentum.{name}")
        if buffer is not None:
            optimizer.state[param]["momentum_buffer"] = buffer.to(param.device).clone()
    meta = checkpoint["meta"]
    return int(meta["step"]), meta.get("best"), meta.get("best_step"), list(meta.get("history", []))
