"""Reading SAM checkpoints: the encoder configuration and safetensors weights, from the Hub or a local folder.

Only safetensors files are read; a checkpoint that ships only pickled ``.bin`` weights is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamVisionConfig

from .errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# checkpoint keys worth reading: the encoder and (for our own checkpoints) the head
KEPT_PREFIXES = ("vision_encoder.", "segmentation_head.")


def resolve_file(source: str, filename: str, *, required: bool = True, **hub_kwargs) -> str | None:
    """Path of ``filename`` in a local folder or a Hub repository (downloaded through the cache)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return str(path)
        if required:
            raise CheckpointError(f"{folder} has no {filename}")
        return None
    if os.path.exists(source):
        raise CheckpointError(f"{source} is a file; expected a folder written by save_pretrained or a Hub id")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(source, filename, **{k: v for k, v in hub_kwargs.items() if v is not None})
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
        raise CheckpointError(
            f"{filename} of {source} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline mode or no network). Download it once while online, e.g. `hf download {source}`, "
            "or pass a local folder written by save_pretrained"
        ) from None
    except EntryNotFoundError:
        if required:
            raise CheckpointError(f"the Hub repository {source} has no {filename}") from None
        return None
    except (RepositoryNotFoundError, HFValidationError):
        raise CheckpointError(
            f"{source!r} is neither a local folder nor a Hub repository you can access "
            "(check the spelling, or log in with `hf auth login` for a private repository)"
        ) from None


def load_vision_config(source: str, **hub_kwargs) -> SamVisionConfig:
    """The ``SamVisionConfig`` of a SAM checkpoint (a ``SamConfig``'s vision part, or a vision config itself)."""
    path = resolve_file(source, CONFIG_NAME, **hub_kwargs)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the configuration ({err})") from None
    model_type = data.get("model_type")
    if model_type == "sam":
        data = dict(data.get("vision_config") or {})
    elif model_type not in ("sam_vision_model",):
        raise CheckpointError(
            f"{path}: not a SAM checkpoint (model_type={model_type!r}; expected 'sam' or 'sam_vision_model')"
        )
    data.pop("model_type", None)
    data.pop("transformers_version", None)
    return SamVisionConfig(**data)


def load_sam_state_dict(source: str, prefixes=KEPT_PREFIXES, **hub_kwargs) -> dict[str, torch.Tensor]:
    """Encoder (and head) tensors of a checkpoint, read from ``model.safetensors`` or its sharded index."""
    from safetensors import safe_open

    single = resolve_file(source, WEIGHTS_NAME, required=False, **hub_kwargs)
    if single is not None:
        files = [single]
    else:
        index_path = resolve_file(source, WEIGHTS_INDEX_NAME, required=False, **hub_kwargs)
        if index_path is None:
            raise CheckpointError(
                f"{source} has no {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}); losam-peft loads weights from "
                "safetensors files only and never unpickles .bin files"
            )
        weight_map = json.loads(Path(index_path).read_text()).get("weight_map", {})
        shards = sorted({f for k, f in weight_map.items() if k.startswith(tuple(prefixes))})
        files = [resolve_file(source, shard, **hub_kwargs) for shard in shards]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(tuple(prefixes)):
                        state[key] = handle.get_tensor(key)
        except Exception as err:  # safetensors raises several error types for a damaged file
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    return state


def resize_encoder_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Fit position tables to another image size.

    The absolute position embedding ``pos_embed`` (1, H, W, C) is resized bicubically; the relative position tables
    ``rel_pos_h``/``rel_pos_w`` (2G-1, head_dim) of global-attention layers are resized linearly, as SAM itself does
    when query and key sizes differ. Any other shape mismatch is an error.
    """
    resized = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key == "pos_embed" and value.dim() == 4:
            grid = value.permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=tuple(want[1:3]), mode="bicubic", align_corners=False)
            resized[key] = grid.permute(0, 2, 3, 1).to(value.dtype).contiguous()
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2 and value.shape[1] == want[1]:
            table = value.t().unsqueeze(0).float()
            table = F.interpolate(table, size=want[0], mode="linear", align_corners=False)
            resized[key] = table[0].t().to(value.dtype).contiguous()
        else:
            raise CheckpointError(
                f"{source}: weight {key} has shape {tuple(value.shape)} but this encoder expects {tuple(want)}; "
                "the checkpoint was made for another encoder size"
            )
    return resized
