"""``LoSamSegmentationConfig``: the configuration of ``SamForSemanticSegmentation``.

It is SAM's ``SamVisionConfig`` (the frozen encoder's architecture) plus the fields of the segmentation model built on
it, under a ``model_type`` of the package's own, so that transformers' Auto classes map it to this package's classes
(registered on ``import losam_peft``) rather than to transformers' SAM.

Configs of other SAM checkpoints are read through :func:`normalize_config_dict`:

* a full ``SamModel`` config (``model_type="sam"``): its ``vision_config`` is the encoder's;
* a ``SamVisionModel`` config (``model_type="sam_vision_model"``);
* a folder written by ``SamForSemanticSegmentation`` before this class existed (``model_type="sam_vision_model"``
  with ``architectures=["SamForSemanticSegmentation"]`` and ``use_fast_path``): its head was trained with
  ``align_corners=False`` upsampling, which such a config keeps unless it says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import SamVisionConfig

from .errors import CheckpointError

#: the ``model_type`` of configs written by this package
LOSAM_MODEL_TYPE = "losam_sam_segmentation"
#: the ``model_type`` values of transformers' SAM checkpoints that hold a usable image encoder
SAM_MODEL_TYPE = "sam"
SAM_VISION_MODEL_TYPE = "sam_vision_model"
#: where the classes live, written into every saved config (``auto_map``). The classes are registered with
#: transformers' Auto classes when ``losam_peft`` is imported, so loading never needs ``trust_remote_code``.
AUTO_MAP = {
    "AutoConfig": "losam_peft.configuration_losam.LoSamSegmentationConfig",
    "AutoModelForSemanticSegmentation": "losam_peft.modeling_losam.SamForSemanticSegmentation",
}
#: the class name that older releases of this package wrote into ``architectures``
_OWN_ARCHITECTURE = "SamForSemanticSegmentation"


@strict
class LoSamSegmentationConfig(SamVisionConfig):
    r"""Configuration of SAM's image encoder with the Learnable Ophthalmology SAM segmentation head.

    All of ``SamVisionConfig``'s fields (the encoder) plus:

    use_fast_path (`bool`, *optional*, defaults to `True`):
        Run the encoder on the package's exact fused-attention path (``losam_peft.fast_path``) instead of
        transformers' stock attention.
    semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
        Label value left out of the cross-entropy loss (padding and unlabelled pixels).
    align_corners (`bool`, *optional*, defaults to `True`):
        ``align_corners`` of the head's final bilinear upsampling to the input size. ``True`` is what the authors'
        reference does; models saved by losam-peft before this field existed were trained with ``False`` and keep it.
    """

    model_type = LOSAM_MODEL_TYPE

    use_fast_path: bool = True
    semantic_loss_ignore_index: int = 255
    align_corners: bool = True

    def __post_init__(self, **kwargs):
        auto_map = kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        if self.id2label is not None and not self.label2id:
            self.label2id = {str(name): int(index) for index, name in self.id2label.items()}
        # our entries win over stale ones (a folder written by another layout of the package); others are kept
        self.auto_map = {**(dict(auto_map) if isinstance(auto_map, Mapping) else {}), **AUTO_MAP}

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """transformers' reading of ``config.json``, then :func:`normalize_config_dict` (SAM checkpoints of any kind)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            return config_dict, kwargs
        source = str(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            source = f"{source}/{kwargs['subfolder']}"
        return normalize_config_dict(config_dict, source=source), kwargs

    @classmethod
    def from_sam_config(cls, config) -> LoSamSegmentationConfig:
        """This class from any SAM configuration object or dict (a ``SamVisionConfig``, a ``SamConfig``…)."""
        if isinstance(config, cls):
            return cls.from_dict(config.to_dict())
        if isinstance(config, Mapping):
            data = dict(config)
        elif hasattr(config, "to_dict"):
            data = config.to_dict()
        else:
            raise CheckpointError(f"expected a SAM configuration, got a {type(config).__name__}")
        converted = cls.from_dict(normalize_config_dict(data, source=type(config).__name__))
        attn = getattr(config, "_attn_implementation_internal", None)
        if attn is not None:
            converted._attn_implementation_internal = attn
        return converted


def is_legacy_losam_config(config_dict: Mapping[str, Any]) -> bool:
    """True for a config written by ``SamForSemanticSegmentation`` before it had a config class of its own."""
    if config_dict.get("model_type") != SAM_VISION_MODEL_TYPE:
        return False
    architectures = config_dict.get("architectures") or []
    return _OWN_ARCHITECTURE in architectures or "use_fast_path" in config_dict


def normalize_config_dict(config_dict: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The ``LoSamSegmentationConfig`` dict of any supported SAM checkpoint config (see the module docstring).

    Raises ``CheckpointError`` for a config that is not SAM's.
    """
    data = dict(config_dict)
    model_type = data.get("model_type")
    if model_type == LOSAM_MODEL_TYPE:
        return data
    if model_type == SAM_MODEL_TYPE:
        vision = data.get("vision_config") or {}
        if hasattr(vision, "to_dict"):
            vision = vision.to_dict()
        if not isinstance(vision, Mapping):
            raise CheckpointError(f"{source}: the SAM config's vision_config is not a mapping")
        data = dict(vision)
        data.pop("architectures", None)
    elif model_type == SAM_VISION_MODEL_TYPE:
        if is_legacy_losam_config(data):
            data.setdefault("align_corners", False)
        else:
            data.pop("architectures", None)
    else:
        raise CheckpointError(
            f"{source}: not a SAM checkpoint (model_type={model_type!r}; expected {LOSAM_MODEL_TYPE!r}, "
            f"{SAM_MODEL_TYPE!r} or {SAM_VISION_MODEL_TYPE!r})"
        )
    data.pop("transformers_version", None)
    data["model_type"] = LOSAM_MODEL_TYPE
    return data


__all__ = [
    "AUTO_MAP",
    "LOSAM_MODEL_TYPE",
    "LoSamSegmentationConfig",
    "is_legacy_losam_config",
    "normalize_config_dict",
]
