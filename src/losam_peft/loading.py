"""Reading SAM checkpoints: the encoder configuration and safetensors weights, from the Hub or a local folder.

Only safetensors files are read; a checkpoint that ships only pickled ``.bin`` weights is refused. The weights
themselves are loaded by transformers' ``PreTrainedModel.from_pretrained`` (``use_safetensors=True``); this module
resolves and inspects the files first, so that problems get this package's errors, and fits the position tables to
another input size after loading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .configuration_losam import LoSamSegmentationConfig, normalize_config_dict
from .constants import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from .errors import CheckpointError, LoSamValueError

WEIGHTS_NAME = SAFE_WEIGHTS_NAME
WEIGHTS_INDEX_NAME = SAFE_WEIGHTS_INDEX_NAME
#: pickled weights that losam-peft never loads (named in error messages only)
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# checkpoint keys worth reading: the encoder and (for our own checkpoints) the head
KEPT_PREFIXES = ("vision_encoder.", "segmentation_head.")

__all__ = [
    "CheckpointError",
    "checkpoint_weight_shapes",
    "load_sam_state_dict",
    "load_vision_config",
    "resize_encoder_state_dict",
    "resolve_file",
]


def _display(source: str, subfolder: str = "") -> str:
    return f"{source}/{subfolder}" if subfolder else source


def resolve_file(source: str, filename: str, *, required: bool = True, subfolder: str = "", **hub_kwargs) -> str | None:
    """Path of ``filename`` in a local folder or a Hub repository (downloaded through the cache)."""
    subfolder = subfolder or ""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / subfolder / filename
        if path.is_file():
            return str(path)
        if required:
            raise CheckpointError(f"{folder / subfolder if subfolder else folder} has no {filename}", folder)
        return None
    if os.path.exists(source):
        raise CheckpointError(f"{source} is a file; expected a folder written by save_pretrained or a Hub id", source)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        return hf_hub_download(source, filename, **kwargs)
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
        raise CheckpointError(
            f"{filename} of {_display(source, subfolder)} is not in the local Hugging Face cache and the Hub cannot be "
            f"reached (offline mode or no network). Download it once while online, e.g. `hf download {source}`, "
            "or pass a local folder written by save_pretrained"
        ) from None
    except EntryNotFoundError:
        if required:
            raise CheckpointError(f"the Hub repository {_display(source, subfolder)} has no {filename}") from None
        return None
    except (RepositoryNotFoundError, HFValidationError):
        raise CheckpointError(
            f"{source!r} is neither a local folder nor a Hub repository you can access "
            "(check the spelling, or log in with `hf auth login` for a private repository)"
        ) from None


#: ``from_pretrained`` keyword arguments that say where a checkpoint on the Hub is (passed on to ``resolve_file``)
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")


def pretrained_source(pretrained_model_name_or_path, kwargs: dict) -> tuple[str, str, dict]:
    """``(source, subfolder, hub_kwargs)`` of a ``from_pretrained`` call, after refusing what would not load from
    safetensors (``use_safetensors=False``, ``state_dict=``, ``gguf_file=``); sets ``use_safetensors=True`` in
    ``kwargs``. The one check behind every model class's ``from_pretrained``."""
    if pretrained_model_name_or_path is None:
        raise LoSamValueError("from_pretrained needs a checkpoint (a local folder or a Hub id)")
    if kwargs.get("use_safetensors") is False:
        raise CheckpointError("losam-peft loads weights from safetensors files only; use_safetensors=False is refused")
    if kwargs.get("state_dict") is not None or kwargs.get("gguf_file") is not None:
        raise LoSamValueError("from_pretrained reads safetensors checkpoints only (no state_dict= or gguf_file=)")
    kwargs["use_safetensors"] = True
    hub = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    return str(pretrained_model_name_or_path), kwargs.get("subfolder") or "", hub


def read_config_json(source: str, subfolder: str = "", **hub_kwargs) -> tuple[str, dict]:
    """``(path, data)`` of a checkpoint's ``config.json``; unreadable JSON or anything but an object is a
    ``CheckpointError`` naming the file."""
    path = resolve_file(source, CONFIG_NAME, subfolder=subfolder, **hub_kwargs)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the configuration ({err})", path) from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: the configuration must be a JSON object", path)
    return path, dict(data)


def load_vision_config(source: str, subfolder: str = "", **hub_kwargs) -> LoSamSegmentationConfig:
    """The ``LoSamSegmentationConfig`` of a SAM checkpoint (a ``SamModel``'s vision part, a ``SamVisionModel``'s
    config, or a folder written by ``SamForSemanticSegmentation``, old or new)."""
    path, data = read_config_json(source, subfolder, **hub_kwargs)
    data = normalize_config_dict(data, source=path)
    data.pop("model_type", None)
    return LoSamSegmentationConfig.from_dict(data)


def _weight_files(source: str, subfolder: str = "", prefixes=None, **hub_kwargs) -> list[str]:
    single = resolve_file(source, WEIGHTS_NAME, required=False, subfolder=subfolder, **hub_kwargs)
    if single is not None:
        return [single]
    index_path = resolve_file(source, WEIGHTS_INDEX_NAME, required=False, subfolder=subfolder, **hub_kwargs)
    if index_path is None:
        where = _display(source, subfolder)
        folder = Path(source).expanduser() / subfolder
        pickled = [name for name in PICKLE_NAMES if (folder / name).is_file()] if folder.is_dir() else []
        extra = f" ({where} has {', '.join(pickled)}: pickled weights, which are never unpickled)" if pickled else ""
        raise CheckpointError(
            f"{where} has no {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}); losam-peft loads weights from "
            f"safetensors files only and never unpickles .bin files{extra}. Convert the checkpoint to safetensors "
            "first (e.g. save_pretrained(..., safe_serialization=True) where it was made)",
            folder if folder.is_dir() else None,
        )
    try:
        weight_map = json.loads(Path(index_path).read_text()).get("weight_map", {})
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"{index_path}: not a readable safetensors index ({err})", index_path) from None
    shards = sorted({f for k, f in weight_map.items() if prefixes is None or k.startswith(tuple(prefixes))})
    return [resolve_file(source, shard, subfolder=subfolder, **hub_kwargs) for shard in shards]


def checkpoint_weight_shapes(source: str, subfolder: str = "", **hub_kwargs) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of a checkpoint, read from the safetensors headers (no tensor is loaded).

    Raises ``CheckpointError`` for a checkpoint without safetensors weights (``.bin`` only), naming the folder.
    """
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _weight_files(source, subfolder, **hub_kwargs):
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises several error types for a damaged file
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})", file) from None
    return shapes


def load_sam_state_dict(
    source: str, prefixes=KEPT_PREFIXES, subfolder: str = "", **hub_kwargs
) -> dict[str, torch.Tensor]:
    """Encoder (and head) tensors of a checkpoint, read from ``model.safetensors`` or its sharded index."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(source, subfolder, prefixes=prefixes, **hub_kwargs):
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(tuple(prefixes)):
                        state[key] = handle.get_tensor(key)
        except Exception as err:  # safetensors raises several error types for a damaged file
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})", file) from None
    return state


def resize_encoder_state_dict(
    state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Fit position tables to another image size.

    The absolute position embedding ``pos_embed`` (1, H, W, C) is resized bicubically; the relative position tables
    ``rel_pos_h``/``rel_pos_w`` (2G-1, head_dim) of global-attention layers are resized linearly, as SAM itself does
    when query and key sizes differ. Any other shape mismatch is an error. Only the shapes of ``target`` are read
    (meta tensors will do).
    """
    resized = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key.endswith("pos_embed") and value.dim() == 4:
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
