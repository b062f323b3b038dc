"""SAM's frozen ViT image encoder plus the paper's semantic segmentation head.

The path of one image through the model reads top to bottom here:

    pixel_values (B, 3, S, S)
      -> vision_encoder.patch_embed + pos_embed        (B, S/16, S/16, C)  channels-last tokens
      -> vision_encoder.layers[i]                       (a LoSAM adapter adds ``prompt(f)`` before each block)
      -> vision_encoder.neck                            (B, 256, S/16, S/16)
      -> segmentation_head                              (B, num_labels, S/4, S/4)
      -> one bilinear upsampling to the output size     (B, num_labels, S, S)   (``config.align_corners``)

``vision_encoder`` is transformers' own, unmodified ``SamVisionEncoder``; its weights come from any SAM checkpoint
(a full ``SamModel`` such as ``facebook/sam-vit-base``, a ``SamVisionModel``, or a folder written by
``save_pretrained``). Loading goes through transformers' ``PreTrainedModel.from_pretrained`` (safetensors only), so
``dtype``, ``device_map``, ``attn_implementation``, ``subfolder``… behave as they do for transformers' models.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamVisionConfig
from transformers import initialization as hf_init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.sam.modeling_sam import SamLayerNorm, SamPreTrainedModel, SamVisionEncoder
from transformers.utils import logging

from .configuration_losam import LoSamSegmentationConfig
from .constants import ADAPTER_CONFIG_NAME
from .errors import CheckpointError, LoSamError, LoSamValueError
from .fast_path import disable_fast_path, enable_fast_path
from .labels import normalise_id2label
from .loading import (
    checkpoint_weight_shapes,
    load_vision_config,
    pretrained_source,
    resize_encoder_state_dict,
    resolve_file,
)

logger = logging.get_logger(__name__)

ENCODER_PREFIX = "vision_encoder."
HEAD_PREFIX = "segmentation_head."
#: outputs of ``LoSamImageProcessor`` that transformers' pipelines hand to ``forward`` with the pixel values
_PROCESSOR_OUTPUTS = ("original_sizes", "reshaped_input_sizes")


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
            + [nn.Conv2d(width, width, kernel_size=3, padding=d, dilation=d, groups=width) for d in range(1, groups)]
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
    """The paper's task head on the 1/16-resolution neck output; returns logits at 1/4 of the input resolution.

    Two stages of [2x2 transposed conv, stride 2, halving the channels; LayerNorm over channels; GELU] (x4 resolution),
    a multi-scale conv with 4 groups, BatchNorm, GELU, and a 1x1 conv to ``num_labels``. With SAM's 256-channel neck
    and two labels this has 165,426 parameters. The final upsampling to the output size is
    :func:`upsample_logits` (``SamForSemanticSegmentation`` does it once, with ``config.align_corners``).
    """

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__()
        if in_channels % 16:
            raise LoSamValueError(f"the segmentation head needs the neck's channels divisible by 16, got {in_channels}")
        mid, low = in_channels // 2, in_channels // 4
        self.up1 = nn.ConvTranspose2d(in_channels, mid, kernel_size=2, stride=2)
        self.norm1 = SamLayerNorm(mid, eps=1e-6, data_format="channels_first")
        self.up2 = nn.ConvTranspose2d(mid, low, kernel_size=2, stride=2)
        self.norm2 = SamLayerNorm(low, eps=1e-6, data_format="channels_first")
        self.multiscale = MultiScaleConv(low, groups=4)
        self.norm3 = nn.BatchNorm2d(low)
        self.classifier = nn.Conv2d(low, num_labels, kernel_size=1)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.up1(features)))
        x = self.act(self.norm2(self.up2(x)))
        x = self.act(self.norm3(self.multiscale(x)))
        return self.classifier(x)


def upsample_logits(logits: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resampling of (B, L, h, w) logits to ``size`` (a no-op when the size is already right)."""
    size = tuple(int(v) for v in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=bool(align_corners))


def reset_head_parameters(module: nn.Module) -> None:
    """PyTorch's own default initialisation of one head module (not SAM's ``initializer_range``).

    Written with transformers' guarded init functions, so that weights already loaded by ``from_pretrained`` (flagged
    ``_is_hf_initialized``) are left alone.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            hf_init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        if module.weight is not None:
            hf_init.ones_(module.weight)
        if module.bias is not None:
            hf_init.zeros_(module.bias)
        if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            hf_init.zeros_(module.running_mean)
            hf_init.ones_(module.running_var)
            hf_init.zeros_(module.num_batches_tracked)


class SamForSemanticSegmentation(SamPreTrainedModel):
    """SAM's image encoder with the paper's segmentation head; ``config`` is a :class:`LoSamSegmentationConfig`
    (any ``SamVisionConfig`` is converted to one)."""

    config_class = LoSamSegmentationConfig
    config: LoSamSegmentationConfig
    base_model_prefix = "vision_encoder"
    main_input_name = "pixel_values"
    # A full SamModel checkpoint also holds SAM's prompt encoder and mask decoder: they are not used here.
    _keys_to_ignore_on_load_unexpected = [r"^prompt_encoder\.", r"^mask_decoder\.", r"^shared_image_embedding\."]
    # SAM checkpoints have no head: from_pretrained reports a fresh head itself (INFO, or a warning when a saved head
    # was dropped because the labels changed) instead of transformers' "newly initialized" warning.
    _keys_to_ignore_on_load_missing = [r"^segmentation_head\."]

    def __init__(self, config: SamVisionConfig):
        if not isinstance(config, LoSamSegmentationConfig):
            config = LoSamSegmentationConfig.from_sam_config(config)
        super().__init__(config)
        self.vision_encoder = SamVisionEncoder(config)
        self.segmentation_head = LoSamSegmentationHead(config.output_channels, config.num_labels)
        self.post_init()
        if config.use_fast_path:
            self.set_fast_path(True)

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder (a PreTrainedModel of its own) is initialised by its own _init_weights; what reaches this one is
        # the head (and the model itself). The head starts from PyTorch's default initialisation, as in the reference:
        # SAM's configs carry initializer_range=1e-10, which would start the head at zero.
        if module is self:
            return
        reset_head_parameters(module)

    # -- fast path -------------------------------------------------------------------------------------------------
    def set_fast_path(self, enabled: bool) -> None:
        """Switch the encoder between the fused-attention fast path and transformers' stock attention."""

        (enable_fast_path if enabled else disable_fast_path)(self.vision_encoder)
        self.config.use_fast_path = bool(enabled)

    # -- input size ------------------------------------------------------------------------------------------------
    def set_image_size(self, image_size: int) -> None:
        """Run the encoder at another input size (a multiple of the patch size), in place.

        The absolute position embedding is resized bicubically and the global-attention layers' relative position
        tables linearly (windowed layers keep theirs); ``config.image_size`` follows.
        """

        _check_image_size(image_size, self.config)
        image_size = int(image_size)
        encoder = self.vision_encoder
        patch = _patch_size(self.config)
        grid = image_size // patch
        current, target, owners = {}, {}, {}
        if encoder.pos_embed is not None:
            current["pos_embed"] = encoder.pos_embed
            target["pos_embed"] = torch.empty(1, grid, grid, encoder.pos_embed.shape[-1], device="meta")
            owners["pos_embed"] = (encoder, "pos_embed")
        for index, layer in enumerate(encoder.layers):
            block = getattr(layer, "base_layer", layer)  # a LoSamLayer wraps the block
            attn = block.attn
            if block.window_size != 0 or not getattr(attn, "use_rel_pos", False):
                continue
            for name in ("rel_pos_h", "rel_pos_w"):
                key = f"layers.{index}.attn.{name}"
                table = getattr(attn, name)
                current[key] = table
                target[key] = torch.empty(2 * grid - 1, table.shape[1], device="meta")
                owners[key] = (attn, name)
        with torch.no_grad():
            resized = resize_encoder_state_dict(
                {k: v.detach() for k, v in current.items()}, target, source=type(self).__name__
            )
        for key, (owner, name) in owners.items():
            old = current[key]
            if resized[key].shape != old.shape:
                setattr(owner, name, nn.Parameter(resized[key].to(old.device), requires_grad=old.requires_grad))
        encoder.patch_embed.image_size = (image_size, image_size)
        encoder.patch_embed.num_patches = grid * grid
        encoder.image_size = image_size
        self.config.image_size = image_size
        if encoder.config is not self.config:
            encoder.config.image_size = image_size

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        """Logits at the input resolution; with ``labels``, the cross-entropy at the labels' resolution.

        The head's 1/4-resolution logits are resampled once to each output size (the input size for ``logits``,
        the labels' size for the loss when it differs), bilinearly with ``config.align_corners``.
        """
        for key in _PROCESSOR_OUTPUTS:  # LoSamImageProcessor's geometry, which transformers' pipelines pass along
            kwargs.pop(key, None)
        self._check_pixel_values(pixel_values)
        encoder_kwargs = {"output_hidden_states": True} if output_hidden_states else {}
        encoder_outputs = self.vision_encoder(pixel_values, **encoder_kwargs)
        low_res = self.segmentation_head(encoder_outputs.last_hidden_state)
        align_corners = bool(self.config.align_corners)
        logits = upsample_logits(low_res, pixel_values.shape[-2:], align_corners)
        loss = None
        if labels is not None:
            labels = _label_map(labels)
            at_labels = logits if labels.shape[-2:] == logits.shape[-2:] else low_res
            loss = self.compute_loss(
                at_labels, labels, ignore_index=self.config.semantic_loss_ignore_index, align_corners=align_corners
            )
        hidden_states = encoder_outputs.hidden_states if output_hidden_states else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    @staticmethod
    def compute_loss(
        logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, align_corners: bool = True
    ) -> torch.Tensor:
        """Cross-entropy at the labels' resolution; ``logits`` of another size are resampled once (bilinear)."""
        labels = _label_map(labels)
        logits = upsample_logits(logits, labels.shape[-2:], align_corners)
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

    # -- adapters ----------------------------------------------------------------------------------------------------
    def load_adapter(self, peft_model_id=None, *args, **kwargs):
        """transformers' PEFT integration, except for LoSAM adapters, which it cannot load: those raise ``LoSamError``.

        (transformers expects PEFT's own ``PeftType`` enum members; the "LOSAM" type is registered with PEFT under
        its plain name.) Load a LoSAM adapter with ``losam_peft.load_adapter(model, adapter_dir)`` or
        ``peft.PeftModel.from_pretrained(model, adapter_dir)``.
        """
        if _adapter_peft_type(peft_model_id, kwargs) == "LOSAM":
            raise LoSamError(
                f"{peft_model_id}: transformers' model.load_adapter cannot load LoSAM adapters (its PEFT integration "
                "knows only PEFT's built-in methods). Use losam_peft.load_adapter(model, adapter) or "
                "peft.PeftModel.from_pretrained(model, adapter) instead; both return a PeftModel with the adapter's "
                "prompt layers and trained segmentation head"
            )
        return super().load_adapter(peft_model_id, *args, **kwargs)

    # -- loading -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args,
        config: SamVisionConfig | str | os.PathLike | None = None,
        num_labels: int | None = None,
        id2label: Mapping[int, str] | None = None,
        label2id: Mapping[str, int] | None = None,
        image_size: int | None = None,
        use_fast_path: bool | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> SamForSemanticSegmentation:
        """Load SAM's encoder weights (and a saved head, if any) from a Hub id or a local folder.

        Works with a full ``SamModel`` checkpoint (``facebook/sam-vit-base``; its prompt encoder and mask decoder are
        skipped), a ``SamVisionModel`` checkpoint, and folders written by this class's ``save_pretrained`` (also
        those of earlier releases, whose configs are ``SamVisionConfig``'s and whose heads keep
        ``align_corners=False``). Every other keyword argument is transformers' ``PreTrainedModel.from_pretrained``'s
        (``dtype``/``torch_dtype``, ``device_map``, ``attn_implementation``, ``ignore_mismatched_sizes``,
        ``subfolder``, ``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``output_loading_info``…) or a
        config field to override (e.g. ``align_corners=``).

        Args:
            num_labels, id2label, label2id: the labels of the head. A saved head made for other labels (another
                number, or other names; naming generic ``LABEL_i`` labels keeps the head) is dropped and a fresh one
                started, with a warning (with ``ignore_mismatched_sizes=True``, transformers' behaviour instead: only
                the weights whose shapes changed are re-initialised).
            image_size: input size other than the checkpoint's: the absolute position embedding is resized
                bicubically and the global layers' relative position tables linearly after loading.
            use_fast_path: run the encoder on the package's fused-attention path (default: the config's, True).
            device: move the model there after loading (``device_map`` places the weights while loading instead).

        Weights are read from safetensors files only; ``use_safetensors=False`` is refused.
        """
        source, subfolder, hub = pretrained_source(pretrained_model_name_or_path, kwargs)

        # the configuration: the checkpoint's (any SAM flavour, normalised) or the one given
        if config is None:
            config = load_vision_config(source, subfolder=subfolder, **hub)
            saved_labels = dict(config.id2label)
        else:
            if isinstance(config, (str, os.PathLike)):
                config = load_vision_config(str(config), **hub)
            else:
                config = LoSamSegmentationConfig.from_sam_config(config)
            saved_labels = None
        for key in [k for k in kwargs if k not in _LOADING_KWARGS and _is_config_field(config, k)]:
            setattr(config, key, kwargs.pop(key))
        _apply_label_overrides(config, num_labels, id2label, label2id)
        if image_size is not None:
            _check_image_size(image_size, config)
        if use_fast_path is not None:
            config.use_fast_path = bool(use_fast_path)

        # what the checkpoint holds, from the safetensors headers (refuses .bin-only checkpoints)
        shapes = checkpoint_weight_shapes(source, subfolder=subfolder, **hub)
        if not any(key.startswith(ENCODER_PREFIX) for key in shapes):
            raise CheckpointError(
                f"{_where(source, subfolder)} holds no SAM vision encoder weights (no key starts with "
                f"{ENCODER_PREFIX!r}); expected a SamModel, SamVisionModel or SamForSemanticSegmentation checkpoint"
            )
        target_size = int(image_size) if image_size is not None else int(config.image_size)
        load_config = LoSamSegmentationConfig.from_dict(config.to_dict())
        load_config._attn_implementation_internal = config._attn_implementation_internal
        saved_size = _checkpoint_image_size(shapes, config)
        if saved_size is not None:
            load_config.image_size = saved_size

        # a saved head made for other labels: load it as saved, then start a fresh one
        has_head = any(key.startswith(HEAD_PREFIX) for key in shapes)
        saved_num_labels = shapes.get(HEAD_PREFIX + "classifier.weight", (None,))[0]
        labels_changed = (saved_labels is not None and _labels_differ(saved_labels, dict(config.id2label))) or (
            saved_num_labels is not None and saved_num_labels != config.num_labels
        )
        fresh_head = has_head and labels_changed and not kwargs.get("ignore_mismatched_sizes", False)
        if fresh_head and saved_num_labels is not None:
            load_config.num_labels = int(saved_num_labels)

        loaded = super().from_pretrained(source, *model_args, config=load_config, **kwargs)
        model, loading_info = loaded if isinstance(loaded, tuple) else (loaded, None)

        if model.config.image_size != target_size:
            model.set_image_size(target_size)
        model.config.id2label = dict(config.id2label)
        model.config.label2id = (
            dict(config.label2id) if config.label2id else {name: index for index, name in config.id2label.items()}
        )
        where = _where(source, subfolder)
        if fresh_head:
            old = model.segmentation_head
            reference = old.classifier.weight
            model.segmentation_head = LoSamSegmentationHead(config.output_channels, config.num_labels).to(
                device=reference.device, dtype=reference.dtype
            )
            model.segmentation_head.train(old.training)
            message = (
                f"{where}: the saved segmentation head was made for other labels "
                f"({saved_labels if saved_labels is not None else f'{saved_num_labels} labels'}); it was dropped and "
                f"a fresh, untrained head started for {dict(config.id2label)}"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
        elif not has_head:
            logger.info(
                "%s: loaded the SAM image encoder; the segmentation head (%d labels) starts untrained",
                where,
                config.num_labels,
            )
        if device is not None:
            model.to(device)
        model.eval()
        return (model, loading_info) if loading_info is not None else model


# transformers' from_pretrained arguments that are also config attribute names: they stay loading arguments
_LOADING_KWARGS = {"dtype", "torch_dtype", "attn_implementation", "experts_implementation", "name_or_path"}


def _is_config_field(config: LoSamSegmentationConfig, key: str) -> bool:
    return key in getattr(config, "__dataclass_fields__", {}) or (not key.startswith("_") and key in vars(config))


def _adapter_peft_type(peft_model_id, kwargs: Mapping) -> str | None:
    """The ``peft_type`` of the adapter that ``load_adapter`` was asked for (None when it cannot be told)."""
    config = kwargs.get("peft_config")
    if config is not None:
        value = config.get("peft_type") if isinstance(config, Mapping) else getattr(config, "peft_type", None)
        return None if value is None else str(getattr(value, "value", value))
    if peft_model_id is None:
        return None

    hub = {k: kwargs.get(k) for k in ("revision", "token", "cache_dir") if kwargs.get(k) is not None}
    try:
        path = resolve_file(str(peft_model_id), ADAPTER_CONFIG_NAME, required=False, **hub)
        data = json.loads(Path(path).read_text()) if path else {}
    except (LoSamError, OSError, ValueError):
        return None
    value = data.get("peft_type") if isinstance(data, Mapping) else None
    return None if value is None else str(value)


def _where(source: str, subfolder: str) -> str:
    return f"{source}/{subfolder}" if subfolder else source


def _patch_size(config) -> int:
    return config.patch_size if isinstance(config.patch_size, int) else int(config.patch_size[0])


def _checkpoint_image_size(shapes: Mapping[str, tuple[int, ...]], config) -> int | None:
    """The input size the checkpoint's position tables were made for (None when it has none)."""
    patch = _patch_size(config)
    pos = shapes.get(ENCODER_PREFIX + "pos_embed")
    if pos is not None and len(pos) == 4:
        return int(pos[1]) * patch
    for index in config.global_attn_indexes:
        table = shapes.get(f"{ENCODER_PREFIX}layers.{index}.attn.rel_pos_h")
        if table is not None:
            return (int(table[0]) + 1) // 2 * patch
    return None


def _labels_differ(saved: Mapping[int, str], wanted: Mapping[int, str]) -> bool:
    """Whether a head saved for ``saved`` labels cannot serve ``wanted``: another number of labels, or other names
    (naming labels that were saved with transformers' generic ``LABEL_i`` names keeps the head)."""
    if len(saved) != len(wanted):
        return True
    generic = all(str(name) == f"LABEL_{index}" for index, name in saved.items())
    return not generic and {int(k): str(v) for k, v in saved.items()} != {int(k): str(v) for k, v in wanted.items()}


def _label_map(labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise LoSamValueError(f"labels must have shape (batch, height, width), got {tuple(labels.shape)}")
    return labels


def _apply_label_overrides(config, num_labels, id2label, label2id) -> bool:
    """Set the label fields; returns True when the labels differ from the config's before."""
    before = dict(config.id2label)
    if id2label is not None:
        id2label = normalise_id2label(id2label)
        if num_labels is not None and num_labels != len(id2label):
            raise LoSamValueError(
                f"num_labels={num_labels} disagrees with id2label, which names {len(id2label)} labels"
            )
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
    patch = _patch_size(config)
    if int(image_size) <= 0 or int(image_size) % patch:
        raise LoSamValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")


def sam_vision_config(name: str = "vit_b", **overrides) -> LoSamSegmentationConfig:
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
    return LoSamSegmentationConfig(**values)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
