"""Mapping the authors' PromptSAM weights (and Meta's original SAM encoder weights) onto this package's model.

The reference (``segment_anything`` code) saves one state dict holding the frozen encoder, the prompt layers and the
head (key names and shapes: ``CHECKPOINTS.md``). :func:`reference_state_dict_to_losam` splits it into

* the encoder's weights, named as ``SamForSemanticSegmentation``'s state dict (``vision_encoder.*``), and
* the adapter's weights, named as in a saved LoSAM adapter's ``adapter_model.safetensors``
  (``base_model.model.vision_encoder.layers.N.losam_prompt.*`` and ``base_model.model.segmentation_head.*``),

and :func:`reference_config` / :func:`reference_reduction` read the architecture from the tensor shapes. The model
built from them computes the reference's forward exactly (``tests/test_modeling.py`` checks it against an
independent implementation), including the head's ``align_corners=True`` upsampling.

Only tensors are mapped here; reading a pickled ``.pth`` file (``torch.load(..., weights_only=True)``) and writing
safetensors is the job of the explicit conversion command, never of the normal loading path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .configuration_losam import LoSamSegmentationConfig
from .errors import CheckpointError

#: the prefix of the encoder in the authors' PromptSAM state dict and in Meta's SAM checkpoints
PROMPT_SAM_PREFIX = "sam.image_encoder."
META_SAM_PREFIX = "image_encoder."
#: parts of a full SAM that the segmentation model does not use
_UNUSED_PREFIXES = ("sam.prompt_encoder.", "sam.mask_decoder.", "prompt_encoder.", "mask_decoder.")
#: key prefixes of a saved PEFT adapter (PeftModel -> LoSamModel -> SamForSemanticSegmentation)
ADAPTER_PREFIX = "base_model.model."

_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:block\.)?(norm1|norm2|attn|mlp)\.(.+)$")
_PROMPT = re.compile(r"^blocks\.(\d+)\.prompt_learn\.(\d+)\.(weight|bias)$")
_BLOCK_PARTS = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn": "attn", "mlp": "mlp"}
_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
# prompt_learn: 0 conv1x1 C->C/r, 1 LayerNorm2d, (2 GELU), 3 depthwise 3x3, 4 LayerNorm2d, (5 GELU), 6 conv1x1, 7 LN2d
_PROMPT_PARTS = {"0": "down", "1": "norm1", "3": "dwconv", "4": "norm2", "6": "up", "7": "norm3"}
_HEAD = {
    "up_conv.up_1.0.": "up1.",
    "up_conv.up_1.1.": "norm1.",
    "up_conv.up_2.0.": "up2.",
    "up_conv.up_2.1.": "norm2.",
    "ms_conv.norm.": "norm3.",
    "decoder.0.": "classifier.",
}


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state_dict)
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel/DDP
        state = {key[len("module.") :]: value for key, value in state.items()}
    if any(key.startswith("encoder.cls_token") or key.startswith("encoder.blocks.") for key in state):
        raise CheckpointError(
            "this is a PromptDiNo checkpoint (the reference's DINOv2 backbone, keys encoder.*); losam-peft converts "
            "PromptSAM checkpoints (keys sam.image_encoder.*) only"
        )
    return state


def _encoder_prefix(state: Mapping[str, torch.Tensor]) -> str:
    for prefix in (PROMPT_SAM_PREFIX, META_SAM_PREFIX):
        if any(key.startswith(prefix) for key in state):
            return prefix
    raise CheckpointError(
        "not a PromptSAM or SAM state dict: no key starts with "
        f"{PROMPT_SAM_PREFIX!r} or {META_SAM_PREFIX!r} (found e.g. {sorted(state)[:3]})"
    )


def reference_state_dict_to_losam(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(encoder_state, adapter_state)`` from a PromptSAM state dict (or a Meta SAM one: empty adapter state).

    ``encoder_state`` loads into ``SamForSemanticSegmentation`` (keys ``vision_encoder.*``); ``adapter_state`` is a
    LoSAM adapter's ``adapter_model.safetensors`` content (prompt layers and head). The reference's 1x1 prompt convs
    become the prompt layer's ``Linear`` weights; a missing classifier bias (a bias-free 1x1 conv) becomes zeros.
    Unknown keys are an error, so that nothing is silently dropped.
    """
    state = _strip_wrappers(state_dict)
    prefix = _encoder_prefix(state)
    encoder: dict[str, torch.Tensor] = {}
    adapter: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    head_keys: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_UNUSED_PREFIXES):
            continue
        if not key.startswith(prefix):
            head_keys[key] = value
            continue
        name = key[len(prefix) :]
        target = _encoder_key(name)
        if target is not None:
            encoder["vision_encoder." + target] = value
            continue
        match = _PROMPT.match(name)
        if match and match.group(2) in _PROMPT_PARTS:
            block, index, kind = match.groups()
            part = _PROMPT_PARTS[index]
            if part in ("down", "up") and kind == "weight":
                value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv (out, in, 1, 1) -> Linear (out, in)
            adapter[f"{ADAPTER_PREFIX}vision_encoder.layers.{block}.losam_prompt.{part}.{kind}"] = value
            continue
        unknown.append(key)
    for key, value in head_keys.items():
        target = _head_key(key)
        if target is None:
            unknown.append(key)
        else:
            adapter[f"{ADAPTER_PREFIX}segmentation_head.{target}"] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys of the state dict have no counterpart in losam-peft: {unknown[:5]}")
    weight = adapter.get(f"{ADAPTER_PREFIX}segmentation_head.classifier.weight")
    bias_key = f"{ADAPTER_PREFIX}segmentation_head.classifier.bias"
    if weight is not None and bias_key not in adapter:
        adapter[bias_key] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    if head_keys and weight is None:
        raise CheckpointError("the state dict has a partial segmentation head (no decoder.0.weight)")
    return encoder, adapter


def _encoder_key(name: str) -> str | None:
    if name == "pos_embed":
        return "pos_embed"
    if name.startswith("patch_embed.proj."):
        return "patch_embed.projection." + name[len("patch_embed.proj.") :]
    if name.startswith("neck."):
        index, _, rest = name[len("neck.") :].partition(".")
        return f"neck.{_NECK[index]}.{rest}" if index in _NECK and rest else None
    match = _BLOCK.match(name)
    if match:
        block, part, rest = match.groups()
        return f"layers.{block}.{_BLOCK_PARTS[part]}.{rest}"
    return None


def _head_key(key: str) -> str | None:
    for source, target in _HEAD.items():
        if key.startswith(source):
            return target + key[len(source) :]
    match = re.match(r"^ms_conv\.convs\.(\d+)\.(weight|bias)$", key)
    if match:
        return f"multiscale.branches.{match.group(1)}.{match.group(2)}"
    return None


def reference_config(state_dict: Mapping[str, torch.Tensor], **overrides) -> LoSamSegmentationConfig:
    """The ``LoSamSegmentationConfig`` of a PromptSAM (or SAM) state dict, read from its tensor shapes.

    The number of heads comes from the relative position tables (their width is the head dim); pass
    ``num_attention_heads=`` for an encoder without them. ``align_corners`` is True, as in the reference.
    """
    state = _strip_wrappers(state_dict)
    prefix = _encoder_prefix(state)

    def get(name: str) -> torch.Tensor | None:
        return state.get(prefix + name)

    proj = get("patch_embed.proj.weight")
    if proj is None:
        raise CheckpointError(f"the state dict has no {prefix}patch_embed.proj.weight")
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))})
    if not blocks:
        raise CheckpointError("the state dict has no encoder blocks")
    depth = blocks[-1] + 1
    pos = get("pos_embed")
    rel = {i: get(f"blocks.{i}.block.attn.rel_pos_h") for i in blocks}
    rel = {i: t if t is not None else get(f"blocks.{i}.attn.rel_pos_h") for i, t in rel.items()}
    if pos is not None:
        grid = int(pos.shape[1])
    elif any(t is not None for t in rel.values()):
        grid = (max(int(t.shape[0]) for t in rel.values() if t is not None) + 1) // 2
    else:
        raise CheckpointError("cannot tell the input size: the state dict has neither pos_embed nor rel_pos tables")
    values: dict = dict(
        hidden_size=hidden,
        num_channels=channels,
        patch_size=patch,
        image_size=grid * patch,
        num_hidden_layers=depth,
        use_abs_pos=pos is not None,
        use_rel_pos=any(t is not None for t in rel.values()),
        align_corners=True,
    )
    if values["use_rel_pos"]:
        head_dim = int(next(t for t in rel.values() if t is not None).shape[1])
        values["num_attention_heads"] = hidden // head_dim
        globals_ = [i for i, t in rel.items() if t is not None and int(t.shape[0]) == 2 * grid - 1]
        windows = {(int(t.shape[0]) + 1) // 2 for i, t in rel.items() if t is not None and i not in globals_}
        values["global_attn_indexes"] = globals_
        values["window_size"] = windows.pop() if len(windows) == 1 else grid
    mlp = get("blocks.0.block.mlp.lin1.weight")
    mlp = mlp if mlp is not None else get("blocks.0.mlp.lin1.weight")
    if mlp is not None:
        values["mlp_dim"] = int(mlp.shape[0])
    qkv_bias = get("blocks.0.block.attn.qkv.bias")
    values["qkv_bias"] = qkv_bias is not None or get("blocks.0.attn.qkv.bias") is not None
    neck = get("neck.0.weight")
    if neck is not None:
        values["output_channels"] = int(neck.shape[0])
    classifier = state.get("decoder.0.weight")
    if classifier is not None:
        values["num_labels"] = int(classifier.shape[0])
    values.update(overrides)
    return LoSamSegmentationConfig(**values)


def reference_reduction(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The prompt layers' channel reduction ``r`` (C -> C/r), or None for a state dict without prompt layers."""
    state = _strip_wrappers(state_dict)
    prefix = _encoder_prefix(state)
    proj = state.get(prefix + "patch_embed.proj.weight")
    for key, value in state.items():
        match = _PROMPT.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if match and match.group(2) == "0" and match.group(3) == "weight" and proj is not None:
            return int(proj.shape[0]) // int(value.shape[0])
    return None


__all__ = [
    "ADAPTER_PREFIX",
    "reference_config",
    "reference_reduction",
    "reference_state_dict_to_losam",
]
