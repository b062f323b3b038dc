"""Mapping the authors' PromptSAM weights (and Meta's original SAM encoder weights) onto this package's model.

The reference (``segment_anything`` code) saves one state dict holding the frozen encoder, the prompt layers and the
head (key names and shapes: ``CHECKPOINTS.md``). :func:`reference_state_dict_to_losam` splits it into

* the encoder's weights, named as ``SamForSemanticSegmentation``'s state dict (``vision_encoder.*``), and
* the adapter's weights, named as in a saved LoSAM adapter's ``adapter_model.safetensors``
  (``base_model.model.vision_encoder.layers.N.losam_prompt.*`` and ``base_model.model.segmentation_head.*``),

and :func:`reference_config` / :func:`reference_reduction` read the architecture from the tensor shapes. The model
built from them computes the reference's forward exactly (``tests/test_modeling.py`` checks it against an
independent implementation), including the head's ``align_corners=True`` upsampling.

The authors' PromptDiNo (DINOv2 backbone, keys ``encoder.*``) is mapped by :func:`prompt_dino_state_dict_to_losam`
onto ``Dinov2ForLoSamSegmentation`` (``dinov2.*``; ``dinov2_with_registers.*`` when the file has register tokens).

:func:`convert_reference_adapter` (``losam convert reference-adapter``) is the whole conversion: it reads the ``.pth``
with :func:`losam_peft.checkpoint_io.load_pth_state_dict` (the package's only pickle reader, restricted to tensors),
checks the file's frozen encoder against the base model's weights, and writes a LoSAM adapter folder. Nothing on the
normal loading path reads a pickle.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from .adapters import quiet_peft_deprecations, save_adapter
from .atomic import OUTPUT_MARKER, atomic_write_json, check_replaceable
from .bases import load_base_model
from .checkpoint_io import load_pth_state_dict
from .configuration_losam import LoSamSegmentationConfig
from .errors import CheckpointError
from .image_processing_losam import LoSamImageProcessor
from .labels import normalise_id2label
from .modeling_losam import SamForSemanticSegmentation
from .modeling_losam_backbones import Dinov2ForLoSamSegmentation, Dinov2WithRegistersForLoSamSegmentation
from .tuner import LoSamConfig

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


def _unwrap(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state_dict)
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel/DDP
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def is_prompt_dino(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the state dict is the reference's PromptDiNo (DINOv2 backbone, keys ``encoder.*``)."""
    return any(key.startswith(("encoder.cls_token", "encoder.blocks.")) for key in _unwrap(state_dict))


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = _unwrap(state_dict)
    if is_prompt_dino(state):
        raise CheckpointError(
            "this is a PromptDiNo checkpoint (the reference's DINOv2 backbone, keys encoder.*): map it with "
            "prompt_dino_state_dict_to_losam (convert_reference_adapter picks the right one)"
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


def _head_key(key: str, names: Mapping[str, str] | None = None) -> str | None:
    """The LoSAM head's name for a reference head key (``names``: prefix map, SAM's head by default)."""
    for source, target in (names if names is not None else _HEAD).items():
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




# -- PromptDiNo ------------------------------------------------------------------------------------------------------
PROMPT_DINO_PREFIX = "encoder."
_DINO_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_DINO_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:block\.)?(.+)$")
_DINO_BLOCK_PARTS = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attn.proj.": "attention.o_proj.",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "mlp.w3.": "mlp.down_proj.",
}
_DINO_HEAD = {**_HEAD, "out_conv.": "classifier."}


def prompt_dino_state_dict_to_losam(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(encoder_state, adapter_state)`` from a PromptDiNo state dict.

    ``encoder_state`` loads into ``Dinov2ForLoSamSegmentation`` (``dinov2.*``; ``Dinov2WithRegistersForLoSam…``'s
    ``dinov2_with_registers.*`` when the file has ``encoder.register_tokens``): DINOv2's fused ``qkv`` is split into
    transformers' ``q_proj``/``k_proj``/``v_proj``, ``ls1/ls2.gamma`` become ``layer_scale1/2.lambda1``, a SwiGLU
    ``w12`` becomes ``gate_proj``/``up_proj``. ``adapter_state`` is the LoSAM adapter's content (prompt layers on
    ``…encoder.layer.N`` and the head, whose ``out_conv`` is the classifier). Unknown keys are an error.
    """
    state = _unwrap(state_dict)
    if not is_prompt_dino(state):
        raise CheckpointError("not a PromptDiNo state dict: no key starts with 'encoder.cls_token' or 'encoder.blocks.'")
    base = "dinov2_with_registers." if PROMPT_DINO_PREFIX + "register_tokens" in state else "dinov2."
    encoder: dict[str, torch.Tensor] = {}
    adapter: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if not key.startswith(PROMPT_DINO_PREFIX):
            target = _dino_head_key(key)
            if target is None:
                unknown.append(key)
            else:
                adapter[f"{ADAPTER_PREFIX}segmentation_head.{target}"] = value
            continue
        name = key[len(PROMPT_DINO_PREFIX) :]
        if name in _DINO_EMBEDDINGS:
            encoder[base + _DINO_EMBEDDINGS[name]] = value
            continue
        match = _PROMPT.match(name)
        if match and match.group(2) in _PROMPT_PARTS:
            block, index, kind = match.groups()
            part = _PROMPT_PARTS[index]
            if part in ("down", "up") and kind == "weight":
                value = value.reshape(value.shape[0], value.shape[1])
            adapter[f"{ADAPTER_PREFIX}{base}encoder.layer.{block}.losam_prompt.{part}.{kind}"] = value
            continue
        match = _DINO_BLOCK.match(name)
        mapped = _dino_block_tensors(match.group(2), value) if match else None
        if mapped is None:
            unknown.append(key)
            continue
        for suffix, tensor in mapped.items():
            encoder[f"{base}encoder.layer.{match.group(1)}.{suffix}"] = tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys of the state dict have no counterpart in losam-peft: {unknown[:5]}")
    weight = adapter.get(f"{ADAPTER_PREFIX}segmentation_head.classifier.weight")
    bias_key = f"{ADAPTER_PREFIX}segmentation_head.classifier.bias"
    if weight is not None and bias_key not in adapter:
        adapter[bias_key] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return encoder, adapter


def _dino_block_tensors(rest: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    if rest.startswith("attn.qkv."):
        kind = rest[len("attn.qkv.") :]
        q, k, v = value.chunk(3, dim=0)
        return {f"attention.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
    if rest.startswith("mlp.w12."):
        kind = rest[len("mlp.w12.") :]
        gate, up = value.chunk(2, dim=0)
        return {f"mlp.gate_proj.{kind}": gate.contiguous(), f"mlp.up_proj.{kind}": up.contiguous()}
    for source, target in _DINO_BLOCK_PARTS.items():
        if rest == source or (source.endswith(".") and rest.startswith(source)):
            return {target + rest[len(source) :]: value}
    return None


def _dino_head_key(key: str) -> str | None:
    return _head_key(key, _DINO_HEAD)


# -- the whole conversion -------------------------------------------------------------------------------------------
def _prompt_reduction(encoder_state: Mapping[str, torch.Tensor], adapter_state: Mapping[str, torch.Tensor]) -> int:
    downs = [v for k, v in adapter_state.items() if k.endswith(".losam_prompt.down.weight")]
    if not downs:
        raise CheckpointError(
            "the state dict holds no prompt layers (prompt_learn.*): a plain SAM checkpoint converts with "
            "`losam convert sam-checkpoint`"
        )
    inner, hidden = (int(v) for v in downs[0].shape)
    if hidden % inner:
        raise CheckpointError(f"the prompt layers map {hidden} channels to {inner}: not a whole reduction")
    return hidden // inner


def default_labels(num_labels: int) -> dict[int, str]:
    """``background`` then ``class_1`` … for a head without label names."""
    return {0: "background", **{i: f"class_{i}" for i in range(1, num_labels)}}


def compare_encoder_weights(
    encoder_state: Mapping[str, torch.Tensor], base_state: Mapping[str, torch.Tensor]
) -> tuple[str | None, str | None, float]:
    """``(first_differing_key, key_with_largest_difference, largest_abs_difference)`` of the file's frozen encoder
    against the base model's weights (None, None, 0.0 when equal within float32 rounding). A key the base lacks, or a
    shape that differs, raises ``CheckpointError``."""
    first, worst, largest = None, None, 0.0
    for key, value in encoder_state.items():
        reference = base_state.get(key)
        if reference is None:
            raise CheckpointError(f"the base model has no weight {key!r}: it is not the encoder this file was trained on")
        if tuple(reference.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{key}: shape {tuple(value.shape)} in the file, {tuple(reference.shape)} in the base model: it is not "
                "the encoder this file was trained on"
            )
        a, b = value.detach().float().cpu(), reference.detach().float().cpu()
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff > 1e-6 * max(1.0, float(b.abs().max()) if b.numel() else 0.0):
            first = first or key
            if diff > largest:
                worst, largest = key, diff
    return first, worst, largest


def convert_reference_adapter(
    input_path,
    output_dir,
    base: str,
    labels=None,
    overwrite: bool = False,
    allow_encoder_mismatch: bool = False,
    modality: str | None = None,
    task: str | None = None,
    **hub_kwargs,
):
    """Turn the authors' trained PromptSAM / PromptDiNo ``.pth`` into a LoSAM adapter folder on ``base``.

    ``base`` is the encoder the file was trained on, as losam-peft loads it (``facebook/sam-vit-base``, a folder from
    ``losam convert sam-checkpoint``, ``facebook/dinov2-small``…). The file's frozen encoder weights must equal the
    base's: otherwise ``CheckpointError`` names the first differing key and the largest difference (with
    ``allow_encoder_mismatch`` a warning says so and the conversion goes on). ``labels``: the class names (a list or
    ``{id: name}``; default ``background``, ``class_1``…), as many as the head has classes.

    The folder holds ``adapter_model.safetensors`` (prompt layers and head), ``adapter_config.json`` (with
    ``align_corners=True``, the reference's upsampling), ``preprocessor_config.json`` (the reference's input: plain
    resize, mean/std 0.5) and a model card; ``LoSamPipeline.from_pretrained(output_dir)`` loads it.
    """
    input_path = Path(input_path).expanduser()
    out = check_replaceable(output_dir, [input_path], overwrite=overwrite, what="output folder")
    state = load_pth_state_dict(input_path)
    dino = is_prompt_dino(state)
    try:
        encoder_state, adapter_state = (prompt_dino_state_dict_to_losam if dino else reference_state_dict_to_losam)(state)
        reduction = _prompt_reduction(encoder_state, adapter_state)
    except CheckpointError as err:
        raise CheckpointError(f"{input_path}: {err}", input_path) from None
    classifier = adapter_state.get(f"{ADAPTER_PREFIX}segmentation_head.classifier.weight")
    if classifier is None:
        raise CheckpointError(f"{input_path}: the state dict has no segmentation head (decoder.0 / out_conv)", input_path)
    num_labels = int(classifier.shape[0])
    id2label = normalise_id2label(labels) if labels is not None else default_labels(num_labels)
    if len(id2label) != num_labels:
        raise CheckpointError(
            f"{input_path}: the head has {num_labels} classes, but {len(id2label)} labels were given "
            f"({', '.join(id2label.values())})",
            input_path,
        )

    model = load_base_model(str(base), id2label=id2label, **hub_kwargs)
    wanted = (Dinov2ForLoSamSegmentation, Dinov2WithRegistersForLoSamSegmentation) if dino else (SamForSemanticSegmentation,)
    if not isinstance(model, wanted):
        kind = "PromptDiNo (DINOv2)" if dino else "PromptSAM (SAM)"
        raise CheckpointError(
            f"{input_path} is a {kind} checkpoint, but the base {base} is a {type(model).__name__}; pass the "
            f"{'DINOv2' if dino else 'SAM'} encoder it was trained on as the base"
        )
    first, worst, largest = compare_encoder_weights(encoder_state, model.state_dict())
    if first is not None:
        message = (
            f"the frozen encoder weights in {input_path} differ from the base {base}'s: first at {first}; largest "
            f"difference {largest:.3g} at {worst}"
        )
        if not allow_encoder_mismatch:
            raise CheckpointError(
                message + "; pass the encoder the file was trained on as the base, or allow_encoder_mismatch=True "
                "(--allow-encoder-mismatch) to convert anyway",
                input_path,
            )
        warnings.warn(message + "; converting anyway (the adapter will run on the base's encoder)", UserWarning, stacklevel=2)

    model.config.align_corners = True
    peft_config = LoSamConfig(
        reduction=reduction, base_model_name_or_path=str(base), align_corners=True, modality=modality, task=task
    )
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, peft_config)
        try:
            set_peft_model_state_dict(peft_model, adapter_state)
        except RuntimeError as err:  # a size mismatch: the file's prompt layers or head do not fit this base
            reason = " ".join(str(err).split())[:400]
            raise CheckpointError(f"{input_path}: the prompt layers or head do not fit the base {base} ({reason})") from None
        saved = get_peft_model_state_dict(peft_model)
    if set(saved) != set(adapter_state):
        missing = sorted(set(saved) - set(adapter_state))[:3]
        extra = sorted(set(adapter_state) - set(saved))[:3]
        raise CheckpointError(
            f"{input_path}: the adapter does not match the base {base}'s blocks (missing {missing}, unexpected {extra})"
        )
    for key, value in adapter_state.items():
        if not torch.equal(saved[key].to(value.dtype).cpu(), value):
            raise CheckpointError(f"{input_path}: {key} did not load into the adapter as saved")  # pragma: no cover
    processor = LoSamImageProcessor(image_size=int(model.config.image_size), mode="paper")
    save_adapter(peft_model, out, image_processor=processor)
    atomic_write_json(out / OUTPUT_MARKER, {"written_by": "losam-peft", "what": "reference-adapter conversion"})
    return out


__all__ = [
    "ADAPTER_PREFIX",
    "compare_encoder_weights",
    "convert_reference_adapter",
    "default_labels",
    "is_prompt_dino",
    "prompt_dino_state_dict_to_losam",
    "reference_config",
    "reference_reduction",
    "reference_state_dict_to_losam",
]
