"""Segmentation models on token-sequence ViT encoders: DINOv2 (as the authors' PromptDiNo), DINOv2 with registers,
ViT and ViT-MAE.

The path of one image through the model:

    pixel_values (B, 3, H, W)                         H, W multiples of the patch size p (518 = 37 x 14 by default)
      -> transformers' encoder (Dinov2Model, …)       tokens (B, 1 + R + h*w, C): CLS, R registers, the patch tokens
         (a LoSAM adapter adds ``prompt(patches)`` before each block, on the h x w grid; CLS and registers untouched)
      -> final LayerNorm, patch tokens only           (B, C, h, w)    h = H/p, w = W/p (no neck)
      -> segmentation_head                            per stage: bilinear x2 (align_corners=True), 2x2 transposed conv,
                                                      LayerNorm, GELU (x16 in all), then the multi-scale conv and the
                                                      1x1 classifier: (B, num_labels, 16h, 16w)
      -> one bilinear upsampling to the input size    (B, num_labels, H, W)   (``config.align_corners``)

Inputs of another size than ``config.image_size`` work: the encoders interpolate their position embeddings to the
grid (bicubically, as transformers does); ``set_image_size`` / ``from_pretrained(image_size=…)`` resize the table once. The encoder weights load from any checkpoint of the plain encoder
(``facebook/dinov2-small``, ``google/vit-base-patch16-224-in21k``, ``facebook/vit-mae-large``…; safetensors only) or a
folder written by ``save_pretrained``. There is no separate fast path: the encoders run transformers' own attention
(SDPA by default).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model, Dinov2WithRegistersModel, ViTMAEModel, ViTModel
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.dinov2.modeling_dinov2 import Dinov2PreTrainedModel
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersPreTrainedModel,
)
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEPreTrainedModel
from transformers.utils import logging

from .configuration_losam_backbones import (
    LoSamDinov2SegmentationConfig,
    LoSamDinov2WithRegistersSegmentationConfig,
    LoSamViTMAESegmentationConfig,
    LoSamViTSegmentationConfig,
    normalize_backbone_config_dict,
)
from .errors import CheckpointError, LoSamValueError
from .loading import checkpoint_weight_shapes, pretrained_source, read_config_json
from .modeling_losam import (
    _LOADING_KWARGS,
    _PROCESSOR_OUTPUTS,
    LoSamSegmentationHead,
    _apply_label_overrides,
    _is_config_field,
    _label_map,
    _labels_differ,
    _where,
    reset_head_parameters,
    upsample_logits,
)

logger = logging.get_logger(__name__)

HEAD_PREFIX = "segmentation_head."


class TokenGridSegmentationHead(LoSamSegmentationHead):
    """The reference's PromptDiNo head on the encoder's (B, C, h, w) patch features.

    :class:`~losam_peft.modeling_losam.LoSamSegmentationHead`'s layers (and state-dict keys), with a bilinear x2
    interpolation (``align_corners=True``) before each transposed conv, so each stage upsamples x4 and the head x16;
    channels C -> C/2 -> C/4. With DINOv2 ViT-S (C=384) and two labels this has 371,210 parameters.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.act(self.norm1(self.up1(x)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.act(self.norm2(self.up2(x)))
        x = self.act(self.norm3(self.multiscale(x)))
        return self.classifier(x)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _TokenEncoderSegmentation:
    """The segmentation model around one token-sequence encoder; mixed into each encoder family's PreTrainedModel.

    The encoder sits under the attribute named by the family's ``base_model_prefix`` (``dinov2``, ``vit``…), so
    checkpoints of the plain encoder load into it as transformers loads any base model into a model with a head.
    """

    encoder_class: type = nn.Module
    encoder_kwargs: dict = {}
    main_input_name = "pixel_values"
    # checkpoints of the encoder with other heads: an image classifier, a pooler, MAE's decoder
    _keys_to_ignore_on_load_unexpected = [r"^classifier\.", r"(^|\.)pooler\.", r"^decoder\."]
    # the plain encoder's checkpoints have no head: from_pretrained reports a fresh head itself
    _keys_to_ignore_on_load_missing = [r"^segmentation_head\."]

    def _build(self, config) -> None:
        setattr(self, self.base_model_prefix, self.encoder_class(config, **self.encoder_kwargs))
        self.segmentation_head = TokenGridSegmentationHead(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def token_encoder(self) -> nn.Module:
        """The transformers encoder model (``Dinov2Model``, ``ViTModel``…)."""
        return getattr(self, self.base_model_prefix)

    def _init_weights(self, module: nn.Module) -> None:
        # the head starts from PyTorch's default initialisation, as in the reference; the encoder keeps its own
        if module is self:
            return
        head = self.__dict__.get("_modules", {}).get("segmentation_head")
        if head is not None and any(module is m for m in head.modules()):
            reset_head_parameters(module)
        else:
            super()._init_weights(module)

    # -- geometry ----------------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int]:
        return _pair(self.config.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens before the patch tokens."""
        return 1 + int(getattr(self.config, "num_register_tokens", 0) or 0)

    def set_fast_path(self, enabled: bool) -> None:
        """No-op: these encoders run transformers' own attention (SDPA); the fast path is SAM's only."""
        return None

    def set_image_size(self, image_size: int) -> None:
        """Run the encoder at another input size (a multiple of the patch size), in place: the position embedding is
        resized to the new grid (bicubically, with the encoder's own ``interpolate_pos_encoding``) and
        ``config.image_size`` follows, so a saved model loads at that size. (Inputs of other sizes still work: the
        encoder interpolates its table at each forward.)"""
        _check_image_size(image_size, self.patch_size)
        size = int(image_size)
        embeddings = self.token_encoder.embeddings
        table = embeddings.position_embeddings
        grid = (size // self.patch_size[0]) * (size // self.patch_size[1])
        if table.shape[1] - 1 != grid:
            probe = torch.empty(1, 1 + grid, table.shape[-1], device="meta")
            with torch.no_grad():
                resized = embeddings.interpolate_pos_encoding(probe, size, size)
            embeddings.position_embeddings = nn.Parameter(
                resized.detach().clone().contiguous(), requires_grad=table.requires_grad
            )
        embeddings.patch_embeddings.image_size = (size, size)
        embeddings.patch_embeddings.num_patches = grid
        if hasattr(embeddings, "image_size"):
            embeddings.image_size = (size, size)
        self.config.image_size = size

    # -- forward -----------------------------------------------------------------------------------------------------
    def _encode(self, pixel_values: torch.Tensor, **kwargs):
        return self.token_encoder(pixel_values, **kwargs)

    def patch_features(self, pixel_values: torch.Tensor, **kwargs):
        """``(features, encoder_outputs)``: the final-norm patch tokens as (B, C, H/p, W/p)."""
        outputs = self._encode(pixel_values, **kwargs)
        tokens = outputs.last_hidden_state[:, self.num_prefix_tokens :]
        height, width = (size // patch for size, patch in zip(pixel_values.shape[-2:], self.patch_size))
        if tokens.shape[1] != height * width:
            raise LoSamValueError(
                f"the encoder returned {tokens.shape[1]} patch tokens for a {height}x{width} patch grid"
            )
        features = tokens.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)
        return features, outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        """Logits at the input resolution; with ``labels``, the cross-entropy at the labels' resolution."""
        for key in _PROCESSOR_OUTPUTS:  # LoSamImageProcessor's geometry, which transformers' pipelines pass along
            kwargs.pop(key, None)
        self._check_pixel_values(pixel_values)
        encoder_kwargs = {"output_hidden_states": True} if output_hidden_states else {}
        features, outputs = self.patch_features(pixel_values, **encoder_kwargs)
        low_res = self.segmentation_head(features)
        align_corners = bool(self.config.align_corners)
        logits = upsample_logits(low_res, pixel_values.shape[-2:], align_corners)
        loss = None
        if labels is not None:
            labels = _label_map(labels)
            at_labels = logits if labels.shape[-2:] == logits.shape[-2:] else low_res
            at_labels = upsample_logits(at_labels, labels.shape[-2:], align_corners)
            loss = F.cross_entropy(
                at_labels.float(), labels.long(), ignore_index=self.config.semantic_loss_ignore_index
            )
        hidden_states = getattr(outputs, "hidden_states", None) if output_hidden_states else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        ph, pw = self.patch_size
        channels = self.config.num_channels
        if (
            pixel_values.dim() != 4
            or pixel_values.shape[1] != channels
            or pixel_values.shape[2] % ph
            or pixel_values.shape[3] % pw
            or pixel_values.shape[2] == 0
            or pixel_values.shape[3] == 0
        ):
            raise LoSamValueError(
                f"pixel_values must have shape (batch, {channels}, height, width) with height and width multiples "
                f"of the patch size {ph} (this model: image_size={self.config.image_size}), got "
                f"{tuple(pixel_values.shape)}; use LoSamImageProcessor to prepare images"
            )

    # -- loading -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args,
        config=None,
        num_labels: int | None = None,
        id2label: Mapping[int, str] | None = None,
        label2id: Mapping[str, int] | None = None,
        image_size: int | None = None,
        use_fast_path: bool | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ):
        """Load the encoder's weights (and a saved head, if any) from a Hub id or a local folder.

        Works with checkpoints of the plain encoder (``Dinov2Model``, ``Dinov2ForImageClassification``,
        ``ViTModel``, ``ViTMAEForPreTraining``…; the classifier, pooler or MAE decoder are skipped) and folders
        written by ``save_pretrained``. The arguments are ``SamForSemanticSegmentation.from_pretrained``'s:
        ``num_labels``/``id2label``/``label2id`` (a saved head made for other labels is dropped with a warning and
        a fresh one started), ``image_size`` (another input size: the position embeddings are interpolated),
        ``device``; ``use_fast_path`` is accepted and ignored (SAM only). Everything else is transformers'
        ``PreTrainedModel.from_pretrained``'s, or a config field to override. Safetensors only.
        """
        source, subfolder, hub = pretrained_source(pretrained_model_name_or_path, kwargs)
        where = _where(source, subfolder)
        if config is None:
            config = read_backbone_config(cls.config_class, source, subfolder=subfolder, **hub)
            saved_labels = dict(config.id2label)
        else:
            if not isinstance(config, cls.config_class):
                data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
                config = cls.config_class.from_dict(normalize_backbone_config_dict(cls.config_class, data, where))
            saved_labels = None
        for key in [k for k in kwargs if k not in _LOADING_KWARGS and _is_config_field(config, k)]:
            setattr(config, key, kwargs.pop(key))
        _apply_label_overrides(config, num_labels, id2label, label2id)
        patch = _pair(config.patch_size)
        if image_size is not None:
            _check_image_size(image_size, patch)

        shapes = checkpoint_weight_shapes(source, subfolder=subfolder, **hub)
        prefix = cls.base_model_prefix + "."
        if not any(key.startswith((prefix, "embeddings.")) for key in shapes):
            raise CheckpointError(
                f"{where} holds no {cls.encoder_class.__name__} weights (no key starts with {prefix!r} or "
                "'embeddings.')"
            )
        has_head = any(key.startswith(HEAD_PREFIX) for key in shapes)
        saved_num_labels = shapes.get(HEAD_PREFIX + "classifier.weight", (None,))[0]
        labels_changed = (saved_labels is not None and _labels_differ(saved_labels, dict(config.id2label))) or (
            saved_num_labels is not None and saved_num_labels != config.num_labels
        )
        fresh_head = has_head and labels_changed and not kwargs.get("ignore_mismatched_sizes", False)
        load_config = cls.config_class.from_dict(config.to_dict())
        load_config._attn_implementation_internal = config._attn_implementation_internal
        if fresh_head and saved_num_labels is not None:
            load_config.num_labels = int(saved_num_labels)

        loaded = super().from_pretrained(source, *model_args, config=load_config, **kwargs)
        model, loading_info = loaded if isinstance(loaded, tuple) else (loaded, None)
        if image_size is not None:
            model.set_image_size(int(image_size))
        model.config.id2label = dict(config.id2label)
        model.config.label2id = (
            dict(config.label2id) if config.label2id else {name: index for index, name in config.id2label.items()}
        )
        if fresh_head:
            old = model.segmentation_head
            reference = old.classifier.weight
            model.segmentation_head = TokenGridSegmentationHead(config.hidden_size, config.num_labels).to(
                device=reference.device, dtype=reference.dtype
            )
            model.segmentation_head.train(old.training)
            warnings.warn(
                f"{where}: the saved segmentation head was made for other labels "
                f"({saved_labels if saved_labels is not None else f'{saved_num_labels} labels'}); it was dropped and "
                f"a fresh, untrained head started for {dict(config.id2label)}",
                UserWarning,
                stacklevel=2,
            )
        elif not has_head:
            logger.info(
                "%s: loaded the %s encoder; the segmentation head (%d labels) starts untrained",
                where,
                cls.encoder_class.__name__,
                config.num_labels,
            )
        if device is not None:
            model.to(device)
        model.eval()
        return (model, loading_info) if loading_info is not None else model


class Dinov2ForLoSamSegmentation(_TokenEncoderSegmentation, Dinov2PreTrainedModel):
    """DINOv2's encoder (``Dinov2Model``) with the reference's PromptDiNo segmentation head; ``config`` is a
    :class:`LoSamDinov2SegmentationConfig` (a ``Dinov2Config`` is converted)."""

    config_class = LoSamDinov2SegmentationConfig
    base_model_prefix = "dinov2"
    encoder_class = Dinov2Model

    def __init__(self, config):
        if not isinstance(config, self.config_class):
            config = _convert_config(self.config_class, config)
        super().__init__(config)
        self._build(config)


class Dinov2WithRegistersForLoSamSegmentation(_TokenEncoderSegmentation, Dinov2WithRegistersPreTrainedModel):
    """``Dinov2WithRegistersModel`` with the PromptDiNo head; the register tokens, like CLS, pass every prompt layer
    untouched and are left out of the head's features."""

    config_class = LoSamDinov2WithRegistersSegmentationConfig
    base_model_prefix = "dinov2_with_registers"
    encoder_class = Dinov2WithRegistersModel

    def __init__(self, config):
        if not isinstance(config, self.config_class):
            config = _convert_config(self.config_class, config)
        super().__init__(config)
        self._build(config)


class ViTForLoSamSegmentation(_TokenEncoderSegmentation, ViTPreTrainedModel):
    """A plain ViT encoder (``ViTModel``, no pooler) with the PromptDiNo head."""

    config_class = LoSamViTSegmentationConfig
    base_model_prefix = "vit"
    encoder_class = ViTModel
    encoder_kwargs = {"add_pooling_layer": False}

    def __init__(self, config):
        if not isinstance(config, self.config_class):
            config = _convert_config(self.config_class, config)
        super().__init__(config)
        self._build(config)

    def _encode(self, pixel_values: torch.Tensor, **kwargs):
        return self.token_encoder(pixel_values, interpolate_pos_encoding=True, **kwargs)


class ViTMAEForLoSamSegmentation(_TokenEncoderSegmentation, ViTMAEPreTrainedModel):
    """A ViT-MAE encoder (``ViTMAEModel``; e.g. an ophthalmology foundation model released as a ViT-L/16 MAE) with the
    PromptDiNo head. No masking: every patch token is kept, in grid order."""

    config_class = LoSamViTMAESegmentationConfig
    base_model_prefix = "vit"
    encoder_class = ViTMAEModel

    def __init__(self, config):
        if not isinstance(config, self.config_class):
            config = _convert_config(self.config_class, config)
        super().__init__(config)
        self._build(config)

    def _encode(self, pixel_values: torch.Tensor, **kwargs):
        if float(self.config.mask_ratio) != 0.0:
            raise LoSamValueError(
                f"ViTMAEForLoSamSegmentation needs mask_ratio=0 (every patch token), the config has "
                f"{self.config.mask_ratio}"
            )
        count = (pixel_values.shape[-2] // self.patch_size[0]) * (pixel_values.shape[-1] // self.patch_size[1])
        noise = torch.arange(count, device=pixel_values.device, dtype=torch.float32).expand(pixel_values.shape[0], -1)
        return self.token_encoder(pixel_values, noise=noise, interpolate_pos_encoding=True, **kwargs)


#: every segmentation model class here, by its config's ``model_type`` and the plain encoder's
BACKBONE_MODELS: tuple[type, ...] = (
    Dinov2ForLoSamSegmentation,
    Dinov2WithRegistersForLoSamSegmentation,
    ViTForLoSamSegmentation,
    ViTMAEForLoSamSegmentation,
)


def backbone_model_class(model_type: str | None) -> type | None:
    """The model class here for a checkpoint of ``model_type`` (the plain encoder's or ours), or None."""
    for cls in BACKBONE_MODELS:
        if model_type in (cls.config_class.model_type, cls.config_class.encoder_model_type):
            return cls
    return None


def read_backbone_config(config_class: type, source: str, subfolder: str = "", **hub_kwargs):
    """``config_class`` from a checkpoint's ``config.json`` (the plain encoder's or one written here)."""
    path, data = read_config_json(source, subfolder, **hub_kwargs)
    return config_class.from_dict(normalize_backbone_config_dict(config_class, data, source=str(path)))


def _convert_config(config_class: type, config):
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    converted = config_class.from_dict(normalize_backbone_config_dict(config_class, data, type(config).__name__))
    attn = getattr(config, "_attn_implementation_internal", None)
    if attn is not None:
        converted._attn_implementation_internal = attn
    return converted


def _check_image_size(image_size, patch: tuple[int, int]) -> None:
    if int(image_size) <= 0 or int(image_size) % patch[0] or int(image_size) % patch[1]:
        raise LoSamValueError(f"image_size must be a positive multiple of the patch size {patch[0]}, got {image_size}")


__all__ = [
    "BACKBONE_MODELS",
    "Dinov2ForLoSamSegmentation",
    "Dinov2WithRegistersForLoSamSegmentation",
    "TokenGridSegmentationHead",
    "ViTForLoSamSegmentation",
    "ViTMAEForLoSamSegmentation",
    "backbone_model_class",
    "read_backbone_config",
]
