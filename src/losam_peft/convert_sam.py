"""``losam convert sam-checkpoint``: Meta's original SAM / MedSAM ``.pth`` -> a transformers-format base folder.

The file (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``…, a full SAM state dict) is read with the restricted
unpickler of :mod:`losam_peft.checkpoint_io`. Its image-encoder keys (``image_encoder.*``) are renamed to
transformers' ``SamVisionEncoder`` naming (``vision_encoder.*``: ``patch_embed.projection``,
``layers.N.layer_norm1``, ``layers.N.attn.qkv``, ``neck.conv1``…); the prompt encoder and mask decoder are left out.
Every dimension of the encoder is read from the tensor shapes (:func:`losam_peft.convert_reference.reference_config`):
hidden size and depth, the number of heads from the relative-position tables' width (the head dim), the window size
and the global-attention layers from their lengths, the input size from the position embedding. ``model_type``
(``vit_b``/``vit_l``/``vit_h``) is optional: when given, the shapes must agree with it, and it supplies the number of
heads of an encoder without relative-position tables.

The output folder holds ``model.safetensors`` (the encoder only) and ``config.json`` (a
``LoSamSegmentationConfig``): ``SamForSemanticSegmentation.from_pretrained(folder)`` loads it (with a fresh head),
so it serves as ``--base`` for training, evaluation, prediction and ``convert reference-adapter``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import check_replaceable, mark_output, write_staged
from .checkpoint_io import load_pth_state_dict
from .configuration_losam import LoSamSegmentationConfig
from .constants import SAFE_WEIGHTS_NAME
from .convert_reference import META_SAM_PREFIX, PROMPT_SAM_PREFIX, reference_config, reference_state_dict_to_losam
from .errors import CheckpointError, LoSamValueError

#: the encoder architectures of Meta's three releases (MedSAM is a vit_b)
SAM_MODEL_TYPES = {
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}


def sam_state_dict_to_hf(
    state_dict: dict[str, torch.Tensor], model_type: str | None = None, source: str = "checkpoint"
) -> tuple[LoSamSegmentationConfig, dict[str, torch.Tensor]]:
    """``(config, encoder_state)`` of a Meta SAM state dict: the config read from the shapes (checked against
    ``model_type`` when given) and the encoder's tensors under transformers' names (``vision_encoder.*``)."""
    if model_type is not None and model_type not in SAM_MODEL_TYPES:
        raise LoSamValueError(f"model_type must be one of {', '.join(SAM_MODEL_TYPES)}, got {model_type!r}")
    if any(key.startswith(PROMPT_SAM_PREFIX) for key in state_dict) or any(".prompt_learn." in k for k in state_dict):
        raise CheckpointError(
            f"{source}: this is a PromptSAM checkpoint (the authors' trained model: encoder, prompt layers and head); "
            "convert it with `losam convert reference-adapter`"
        )
    if not any(key.startswith(META_SAM_PREFIX) for key in state_dict):
        raise CheckpointError(
            f"{source}: not a SAM checkpoint: no key starts with {META_SAM_PREFIX!r} "
            f"(found e.g. {sorted(state_dict)[:3]})"
        )
    encoder_only = {k: v for k, v in state_dict.items() if k.startswith(META_SAM_PREFIX)}
    preset = SAM_MODEL_TYPES.get(model_type) if model_type else None
    has_rel_pos = any(k.endswith("attn.rel_pos_h") for k in encoder_only)
    try:
        if has_rel_pos:
            config = reference_config(encoder_only, initializer_range=0.02)
        else:
            if preset is None:
                raise CheckpointError(
                    f"{source}: the encoder has no relative position tables, so its number of heads cannot be read "
                    "from the shapes; pass --model-type (vit_b, vit_l or vit_h)"
                )
            config = reference_config(
                encoder_only, num_attention_heads=preset["num_attention_heads"], initializer_range=0.02
            )
        encoder, adapter = reference_state_dict_to_losam(encoder_only)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    if adapter:
        raise CheckpointError(f"{source}: the state dict holds prompt layers or a head; use reference-adapter")
    if preset is not None:
        found = {
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "global_attn_indexes": list(config.global_attn_indexes) if has_rel_pos else preset["global_attn_indexes"],
        }
        wrong = [f"{k} {found[k]} (a {model_type} has {v})" for k, v in preset.items() if found[k] != v]
        if wrong:
            raise CheckpointError(f"{source}: not a {model_type} encoder: {'; '.join(wrong)}")
        if not has_rel_pos:
            config.global_attn_indexes = list(preset["global_attn_indexes"])
    return config, encoder


def _check_encoder_complete(config: LoSamSegmentationConfig, encoder: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor of transformers' SamVisionEncoder for ``config`` is present with its shape (meta device)."""
    from transformers.models.sam.modeling_sam import SamVisionEncoder

    with torch.device("meta"):
        expected = {f"vision_encoder.{k}": v.shape for k, v in SamVisionEncoder(config).state_dict().items()}
    missing = sorted(set(expected) - set(encoder))
    unexpected = sorted(set(encoder) - set(expected))
    shapes = [k for k in expected if k in encoder and tuple(encoder[k].shape) != tuple(expected[k])]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shapes:
            parts.append(f"shape of {shapes[0]} is {tuple(encoder[shapes[0]].shape)}, expected {tuple(expected[shapes[0]])}")
        raise CheckpointError(f"{source}: the image encoder is incomplete or inconsistent: {'; '.join(parts)}")


def convert_sam_checkpoint(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_type: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the image encoder of Meta's SAM / MedSAM ``input_path`` (``.pth``) as an HF folder ``output_dir``
    (``model.safetensors`` + ``config.json``). Returns the folder."""
    input_path = Path(input_path).expanduser()
    out = check_replaceable(output_dir, [input_path], overwrite=overwrite, what="output folder")
    state = load_pth_state_dict(input_path)
    config, encoder = sam_state_dict_to_hf(state, model_type=model_type, source=str(input_path))
    _check_encoder_complete(config, encoder, str(input_path))
    encoder = {k: v.detach().to(torch.float32).contiguous() for k, v in encoder.items()}
    config.architectures = ["SamForSemanticSegmentation"]

    def write(staging: Path) -> None:
        save_file(encoder, str(staging / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        config.save_pretrained(str(staging))
        mark_output(staging, "sam-checkpoint conversion")

    return write_staged(out, write)


__all__ = ["SAM_MODEL_TYPES", "convert_sam_checkpoint", "sam_state_dict_to_hf"]
