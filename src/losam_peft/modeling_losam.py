"""SAM's frozen ViT image encoder plus the paper's semantic segmentation head.

The path of one image through the model reads top to bottom here:

    pixel_values (B, 3, S, S)
      -> vision_encoder.patch_embed + pos_embed        (B, S/16, S/16, C)  channels-last tokens
      -> vision_encoder.layers[i]                       (a LoSAM adapter adds ``prompt(f)`` before each block)
      -> vision_encoder.neck                            (B, 256, S/16, S/16)
      -> segmentation_head                              (B, num_labels, S/4, S/4)
      -> bilinear upsampling to the input size          (B, num_labels, S, S)

``vision_encoder`` is transformers' own, unmodified ``SamVisionEncoder``; its weights come from any SAM checkpoint
(a full ``SamModel`` such as ``facebook/sam-vit-base`` or a folder written by ``save_pretrained``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamVisionConfig
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.sam.modeling_sam import SamPreTrainedModel, SamVisionEncoder
from transformers.utils import logging

from .errors import LoSamValueError

logger = logging.get_logger(__name__)

ENCODER_PREFIX = "vision_encoder."
HEAD_PREFIX = "segmentation_head."


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MultiScaleConv(nn.Module):
    """Channels split in four groups: group 0 a 1x1 conv, group i=1..3 a depthwise 3x3 conv with dilation i."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        if channels % groups:
            raise LoSamValueError(f"MultiScaleConv needs channels divisible by {groups}, got {channels}")
        width = channels // groups
        self.width = width
        self.branches = nn.ModuleList(
            [nn.Conv2d(width, width, kernel_size=1)]
            + [
                nn.Conv2d(width, width, kernel_size=3, padding=d, dilation=d, groups=width)
                for d in range(1, groups)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # PyTorch's CPU backward of dilated depthwise convs in bf16 yields non-finite weight gradients (seen with
            # torch 2.13); this block is a negligible share of the compute, so it always runs in float32 under AMP.
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.forward(x.float())
        chunks = torch.split(x, self.width, dim=1)
        return torch.cat([branch(chunk) for branch, chunk in zip(self.branches, chunks)], dim=1)


class LoSamSegmentationHead(nn.Module):
    """The paper's task head on the 1/16-resolution neck output.

    Two stages of [2x2 transposed conv, stride 2, halving the channels; LayerNorm over channels; GELU] (x4 resolution),
    a multi-scale conv with 4 groups, BatchNorm, GELU, and a 1x1 conv to ``num_labels``. With SAM's 256-channel neck
    and two labels this has 165,426 parameters.
    """

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__()
        if in_channels % 16:
            raise LoSamValueError(f"the segmentation head needs the neck's channels divisible by 16, got {in_channels}")
        mid, low = in_channels // 2, in_channels // 4
        self.up1 = nn.ConvTranspose2d(in_channels, mid, kernel_size=2, stride=2)
        self.norm1 = ChannelLayerNorm(mid, eps=1e-6)
        self.up2 = nn.ConvTranspose2d(mid, low, kernel_size=2, stride=2)
        self.norm2 = ChannelLayerNorm(low, eps=1e-6)
        self.multiscale = MultiScaleConv(low, groups=4)
        self.norm3 = nn.BatchNorm2d(low)
        self.classifier = nn.Conv2d(low, num_labels, kernel_size=1)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.up1(features)))
        x = self.act(self.norm2(self.up2(x)))
        x = self.act(self.norm3(self.multiscale(x)))
        return self.classifier(x)


class SamForSemanticSegmentation(SamPreTrainedModel):
    """SAM's image encoder with the paper's segmentation head; ``config`` is a ``SamVisionConfig`` with labels."""

    config_class = SamVisionConfig
    config: SamVisionConfig
    base_model_prefix = "vision_encoder"
    main_input_name = "pixel_values"
    # A full SamModel checkpoint also holds SAM's prompt encoder and mask decoder: they are not used here.
    _keys_to_ignore_on_load_unexpected = [r"^prompt_encoder\.", r"^mask_decoder\.", r"^shared_image_embedding\."]

    def __init__(self, config: SamVisionConfig):
        super().__init__(config)
        self.vision_encoder = SamVisionEncoder(config)
        self.segmentation_head = LoSamSegmentationHead(config.output_channels, config.num_labels)
        self.post_init()
        if getattr(config, "use_fast_path", True):
            self.set_fast_path(True)

    def _init_weights(self, module: nn.Module) -> None:
        if any(module is m for m in self._head_modules()):
            # The head starts from PyTorch's default initialisation, as in the reference; SAM's configs carry
            # initializer_range=1e-10, which would start the head at zero.
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            return
        super()._init_weights(module)

    def _head_modules(self):
        head = self.__dict__.get("_modules", {}).get("segmentation_head")
        return list(head.modules()) if head is not None else []

    # -- fast path -------------------------------------------------------------------------------------------------
    def set_fast_path(self, enabled: bool) -> None:
        """Switch the encoder between the fused-attention fast path and transformers' stock attention."""
        from .fast_path import disable_fast_path, enable_fast_path

        (enable_fast_path if enabled else disable_fast_path)(self.vision_encoder)
        self.config.use_fast_path = bool(enabled)

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput:
        self._check_pixel_values(pixel_values)
        features = self.vision_encoder(pixel_values).last_hidden_state
        logits = self.segmentation_head(features)
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, labels)
        return SemanticSegmenterOutput(loss=loss, logits=logits)

    @staticmethod
    def compute_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Cross-entropy at the labels' resolution (logits upsampled bilinearly when sizes differ)."""
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 3:
            raise LoSamValueError(f"labels must have shape (batch, height, width), got {tuple(labels.shape)}")
        if labels.shape[-2:] != logits.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        expected = (self.config.num_channels, size, size)
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise LoSamValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) for this model "
                f"(image_size={size}), got {tuple(pixel_values.shape)}; use LoSamImageProcessor to prepare images"
            )

    # -- loading -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config: SamVisionConfig | None = None,
        num_labels: int | None = None,
        id2label: Mapping[int, str] | None = None,
        label2id: Mapping[str, int] | None = None,
        image_size: int | None = None,
        use_fast_path: bool | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> SamForSemanticSegmentation:
        """Load SAM's encoder weights (and a saved head, if any) from a Hub id or a local folder.

        Works with a full ``SamModel`` checkpoint (``facebook/sam-vit-base``; its prompt encoder and mask decoder are
        skipped), a ``SamVisionModel`` checkpoint, and folders written by this class's ``save_pretrained``. The head
        is initialised fresh unless the checkpoint holds one with the same labels. ``image_size`` other than the
        checkpoint's resizes the absolute position embedding (bicubic) and the global layers' relative position
        tables (linear), so a 1024 checkpoint runs at any multiple of the patch size.

        Weights are read from safetensors files only.
        """
        from .loading import (
            load_sam_state_dict,
            load_vision_config,
            resize_encoder_state_dict,
        )

        source = str(pretrained_model_name_or_path)
        hub_kwargs = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        if config is None:
            config = load_vision_config(source, **hub_kwargs)
        else:
            config = SamVisionConfig.from_dict(config.to_dict())
        if kwargs:
            unknown = {k: v for k, v in kwargs.items() if k not in _IGNORED_FROM_PRETRAINED_KWARGS}
            for key, value in unknown.items():
                if not hasattr(config, key):
                    raise TypeError(f"from_pretrained() got an unexpected keyword argument {key!r}")
                setattr(config, key, value)
        labels_changed = _apply_label_overrides(config, num_labels, id2label, label2id)
        if image_size is not None:
            _check_image_size(image_size, config)
            config.image_size = int(image_size)
        if use_fast_path is not None:
            config.use_fast_path = bool(use_fast_path)

        state_dict = load_sam_state_dict(source, **hub_kwargs)
        model = cls(config)
        encoder_state = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
        if not encoder_state:
            raise LoSamValueError(
                f"{source} holds no SAM vision encoder weights (no key starts with {ENCODER_PREFIX!r}); "
                "expected a SamModel, SamVisionModel or SamForSemanticSegmentation checkpoint"
            )
        encoder_state = resize_encoder_state_dict(encoder_state, model.vision_encoder.state_dict(), source)
        result = model.vision_encoder.load_state_dict(encoder_state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise LoSamValueError(
                f"{source}: the encoder weights do not fit this configuration "
                f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
        head_state = {k[len(HEAD_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(HEAD_PREFIX)}
        if head_state and not labels_changed:
            model.segmentation_head.load_state_dict(head_state)
        elif head_state:
            logger.info("%s: the saved head was made for other labels; starting a fresh head", source)
        else:
            logger.info(
                "%s: loaded the SAM image encoder; the segmentation head (%d labels) starts untrained",
                source,
                config.num_labels,
            )
        model.name_or_path = source
        model.config._name_or_path = source
        if dtype is not None:
            model.to(getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype)
        if device is not None:
            model.to(device)
        model.eval()
        return model


# keyword arguments that transformers' Auto classes pass along and that have no meaning here
_IGNORED_FROM_PRETRAINED_KWARGS = {
    "trust_remote_code",
    "code_revision",
    "_from_auto",
    "_commit_hash",
    "adapter_kwargs",
    "subfolder",
    "torch_dtype",
    "attn_implementation",
    "low_cpu_mem_usage",
    "use_safetensors",
    "force_download",
    "proxies",
}


def _apply_label_overrides(config, num_labels, id2label, label2id) -> bool:
    """Set the label fields; returns True when the labels differ from the checkpoint's."""
    before = dict(config.id2label)
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in dict(id2label).items()}
        if num_labels is not None and num_labels != len(id2label):
            raise LoSamValueError(f"num_labels={num_labels} disagrees with id2label, which names {len(id2label)} labels")
        if sorted(id2label) != list(range(len(id2label))):
            raise LoSamValueError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
        config.id2label = id2label
        config.label2id = {v: k for k, v in id2label.items()} if label2id is None else dict(label2id)
    elif num_labels is not None:
        if num_labels < 2:
            raise LoSamValueError(f"num_labels must be at least 2 (background plus one class), got {num_labels}")
        if num_labels != len(before):
            config.num_labels = num_labels
    return dict(config.id2label) != before


def _check_image_size(image_size: int, config: SamVisionConfig) -> None:
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    if int(image_size) <= 0 or int(image_size) % patch:
        raise LoSamValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")


def sam_vision_config(name: str = "vit_b", **overrides) -> SamVisionConfig:
    """The encoder configuration of SAM's ViT-B/L/H checkpoints, or a bundled tiny one (``"tiny"``) for demos/tests."""
    presets = {
        "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
        "vit_l": dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]
        ),
        "vit_h": dict(
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]
        ),
    }
    if name in presets:
        values = dict(presets[name], image_size=1024, patch_size=16, window_size=14, output_channels=256)
    else:
        path = Path(__file__).parent / "configs" / f"{name}.json"
        if not path.is_file():
            known = sorted(presets) + sorted(p.stem for p in path.parent.glob("*.json"))
            raise LoSamValueError(f"unknown encoder preset {name!r}; known: {', '.join(known)}")
        values = json.loads(path.read_text())
    values.update(overrides)
    return SamVisionConfig(**values)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
