"""The package's one reader of PyTorch pickles (``.pth``), for the explicit conversion commands only.

Meta's SAM / MedSAM checkpoints and the authors' PromptSAM / PromptDiNo weights are ``torch.save`` pickles of a state
dict. They are opened here with ``torch.load(path, map_location="cpu", weights_only=True)``: torch's restricted
unpickler, which rebuilds tensors and plain containers and refuses any other global without executing it. What the
file holds must then be a plain state dict: a ``dict`` of ``str`` -> ``torch.Tensor``, either at the top level or, as
training scripts often save it, under exactly one of the keys ``"model"`` or ``"state_dict"`` (other entries of such
a wrapper, e.g. an epoch number, are ignored). Anything else is refused with ``CheckpointError``.

Nothing on the normal loading path calls this: models and adapters are read from safetensors only. The converters
(``losam convert sam-checkpoint`` / ``reference-adapter``) write safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

#: keys under which training scripts nest the state dict, tried in this order when the top level is not one
WRAPPER_KEYS = ("model", "state_dict")


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def load_pth_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in the ``.pth`` file ``path``, read with torch's restricted (``weights_only``) unpickler.

    Raises ``CheckpointError`` naming the file when it is missing, not a readable torch file, holds anything the
    restricted unpickler refuses (arbitrary objects: refused without being executed), or is not a plain state dict
    of tensors (at the top level or under ``"model"``/``"state_dict"``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file", path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for refused globals, RuntimeError/EOFError for damaged files
        reason = " ".join(str(err).split())
        if len(reason) > 300:
            reason = reason[:300] + " …"
        raise CheckpointError(
            f"{path}: refused: not a plain PyTorch state dict that torch.load(weights_only=True) can read safely "
            f"({type(err).__name__}: {reason})",
            path,
        ) from None
    if _is_state_dict(loaded):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            if _is_state_dict(loaded.get(key)):
                return dict(loaded[key])
        bad = [k for k, v in loaded.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))][:3]
        detail = (
            "it is empty"
            if not loaded
            else f"entries that are not str -> tensor, e.g. {', '.join(repr(k) for k in bad)}"
        )
        raise CheckpointError(
            f"{path}: not a state dict of tensors ({detail}; a state dict nested under "
            f"{' or '.join(repr(k) for k in WRAPPER_KEYS)} is also accepted)",
            path,
        )
    raise CheckpointError(
        f"{path}: not a state dict of tensors (the file holds a {type(loaded).__name__}); save one with "
        "torch.save(model.state_dict(), path)",
        path,
    )


__all__ = ["WRAPPER_KEYS", "load_pth_state_dict"]
