"""Configurations of the segmentation models on token-sequence ViT encoders: DINOv2, DINOv2 with registers, ViT and
ViT-MAE.

Each is transformers' own config of that encoder (its architecture fields, unchanged) plus the fields of the
segmentation model, under a ``model_type`` of the package's own, so that transformers' Auto classes map it to this
package's classes (registered on ``import losam_peft``) and not to transformers' models:

* ``align_corners`` (default True, as the authors' reference): the head's final bilinear upsampling;
* ``semantic_loss_ignore_index`` (default 255): the label value left out of the loss.

A checkpoint of the plain encoder (``facebook/dinov2-base``: ``model_type="dinov2"``; ``google/vit-…``: ``"vit"``;
``facebook/vit-mae-…``: ``"vit_mae"``) is read as the matching class here (:func:`normalize_backbone_config_dict`).
ViT-MAE's random masking is switched off (``mask_ratio=0``): segmentation needs every patch token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Dinov2Config, Dinov2WithRegistersConfig, ViTConfig, ViTMAEConfig

from .errors import CheckpointError

LOSAM_DINOV2_MODEL_TYPE = "losam_dinov2_segmentation"
LOSAM_DINOV2_REGISTERS_MODEL_TYPE = "losam_dinov2_with_registers_segmentation"
LOSAM_VIT_MODEL_TYPE = "losam_vit_segmentation"
LOSAM_VIT_MAE_MODEL_TYPE = "losam_vit_mae_segmentation"


class _SegmentationConfigMixin:
    """What the four configs share: reading checkpoints of the plain encoder, and the ``auto_map`` entries."""

    #: the ``model_type`` of transformers' config of the plain encoder, read as this class
    encoder_model_type = ""
    #: module paths written into ``auto_map`` of saved configs
    _auto_classes = ("", "")

    def _segmentation_post_init(self, auto_map) -> None:
        if self.id2label is not None and not self.label2id:
            self.label2id = {str(name): int(index) for index, name in self.id2label.items()}
        config_path, model_path = self._auto_classes
        self.auto_map = {
            **(dict(auto_map) if isinstance(auto_map, Mapping) else {}),
            "AutoConfig": config_path,
            "AutoModelForSemanticSegmentation": model_path,
        }

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            return config_dict, kwargs
        return normalize_backbone_config_dict(cls, config_dict, source=str(pretrained_model_name_or_path)), kwargs


def _auto(name: str) -> tuple[str, str]:
    return (
        f"losam_peft.configuration_losam_backbones.LoSam{name}SegmentationConfig",
        f"losam_peft.modeling_losam_backbones.{name}ForLoSamSegmentation",
    )


@strict
class LoSamDinov2SegmentationConfig(_SegmentationConfigMixin, Dinov2Config):
    r"""``Dinov2Config`` plus the segmentation model's fields (``align_corners``, ``semantic_loss_ignore_index``).

    ``image_size`` defaults to 518 (a 37 x 37 grid of 14-pixel patches), DINOv2's and the reference's input size.
    """

    model_type = LOSAM_DINOV2_MODEL_TYPE
    encoder_model_type = "dinov2"
    _auto_classes = _auto("Dinov2")

    image_size: int | list[int] | tuple[int, int] = 518
    align_corners: bool = True
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        auto_map = kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        self._segmentation_post_init(auto_map)


@strict
class LoSamDinov2WithRegistersSegmentationConfig(_SegmentationConfigMixin, Dinov2WithRegistersConfig):
    r"""``Dinov2WithRegistersConfig`` plus the segmentation model's fields; ``image_size`` defaults to 518."""

    model_type = LOSAM_DINOV2_REGISTERS_MODEL_TYPE
    encoder_model_type = "dinov2_with_registers"
    _auto_classes = _auto("Dinov2WithRegisters")

    image_size: int | list[int] | tuple[int, int] = 518
    patch_size: int | list[int] | tuple[int, int] = 14
    align_corners: bool = True
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        auto_map = kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        self._segmentation_post_init(auto_map)


@strict
class LoSamViTSegmentationConfig(_SegmentationConfigMixin, ViTConfig):
    r"""``ViTConfig`` plus the segmentation model's fields (``align_corners``, ``semantic_loss_ignore_index``)."""

    model_type = LOSAM_VIT_MODEL_TYPE
    encoder_model_type = "vit"
    _auto_classes = _auto("ViT")

    align_corners: bool = True
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        auto_map = kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        self._segmentation_post_init(auto_map)


@strict
class LoSamViTMAESegmentationConfig(_SegmentationConfigMixin, ViTMAEConfig):
    r"""``ViTMAEConfig`` plus the segmentation model's fields; ``mask_ratio`` is 0 (every patch token is kept, in
    grid order). The MAE decoder is not part of the model."""

    model_type = LOSAM_VIT_MAE_MODEL_TYPE
    encoder_model_type = "vit_mae"
    _auto_classes = _auto("ViTMAE")

    mask_ratio: float = 0.0
    align_corners: bool = True
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        auto_map = kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        self._segmentation_post_init(auto_map)


#: every backbone config class, by the ``model_type`` values it reads
BACKBONE_CONFIGS: tuple[type, ...] = (
    LoSamDinov2SegmentationConfig,
    LoSamDinov2WithRegistersSegmentationConfig,
    LoSamViTSegmentationConfig,
    LoSamViTMAESegmentationConfig,
)


def backbone_config_class(model_type: str | None) -> type | None:
    """The config class here that reads a checkpoint of ``model_type`` (the plain encoder's or ours), or None."""
    for cls in BACKBONE_CONFIGS:
        if model_type in (cls.model_type, cls.encoder_model_type):
            return cls
    return None


def normalize_backbone_config_dict(cls, config_dict: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """``config_dict`` (the plain encoder's config, or one written by this package) as ``cls``'s dict."""
    data = dict(config_dict)
    model_type = data.get("model_type")
    if model_type not in (cls.model_type, cls.encoder_model_type):
        raise CheckpointError(
            f"{source}: not a {cls.encoder_model_type} checkpoint (model_type={model_type!r}; expected "
            f"{cls.model_type!r} or {cls.encoder_model_type!r})"
        )
    if model_type == cls.encoder_model_type:
        for key in ("architectures", "transformers_version"):
            data.pop(key, None)
        if cls is LoSamViTMAESegmentationConfig:
            data["mask_ratio"] = 0.0
    data["model_type"] = cls.model_type
    return data


__all__ = [
    "BACKBONE_CONFIGS",
    "LOSAM_DINOV2_MODEL_TYPE",
    "LOSAM_DINOV2_REGISTERS_MODEL_TYPE",
    "LOSAM_VIT_MAE_MODEL_TYPE",
    "LOSAM_VIT_MODEL_TYPE",
    "LoSamDinov2SegmentationConfig",
    "LoSamDinov2WithRegistersSegmentationConfig",
    "LoSamViTMAESegmentationConfig",
    "LoSamViTSegmentationConfig",
    "backbone_config_class",
    "normalize_backbone_config_dict",
]
