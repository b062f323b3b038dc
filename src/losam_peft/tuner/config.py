"""``LoSamConfig``: the PEFT configuration of the Learnable Ophthalmology SAM prompt layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from ..errors import LoSamValueError
from ..labels import normalise_id2label

LOSAM_PEFT_TYPE = "LOSAM"
# matches the transformer blocks of the supported encoders: "vision_encoder.layers.0" (SAM), "vit.layers.0" (ViT,
# ViT-MAE), "dinov2.encoder.layer.0" (DINOv2); the tuner then checks that every match is an encoder block
DEFAULT_TARGET_MODULES = r"(?:.*\.)?(?:layers|layer)\.\d+"


@dataclass
class LoSamConfig(PeftConfig):
    """Configuration of a LoSAM adapter: one prompt layer before every encoder block plus the task head.

    The encoder is SAM's (``SamVisionLayer`` blocks), DINOv2's (with or without registers), ViT's or ViT-MAE's; on the
    token-sequence encoders the prompt layers see the patch tokens only (CLS and register tokens pass unchanged).

    Args:
        reduction: channel reduction ``r`` of the prompt layers (C -> C/r -> C). The reference uses 4.
        target_modules: regex or list of module names of the encoder blocks to prompt; by default every block.
        exclude_modules: blocks to leave without a prompt layer.
        modules_to_save: modules trained and saved in full with the adapter; the segmentation head by default.
        layer_norm_eps: epsilon of the prompt layers' LayerNorms.
        encoder_hidden_size, encoder_num_layers: filled in from the model the adapter is made for; loading the
            adapter onto an encoder of another size is refused with a clear error.
        num_labels, id2label: the labels of the head, filled in from the model's config.
        image_size: the encoder input size the adapter was trained at.
        modality, task: free-form descriptors used by model cards and the Hub listing (e.g. "fundus", "vessels").
    """

    reduction: int = field(default=4, metadata={"help": "Channel reduction r of the prompt layers (C -> C/r)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Encoder blocks to prompt (regex or names); default: every encoder block."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Encoder blocks to leave unprompted."}
    )
    modules_to_save: Optional[list[str]] = field(
        default_factory=lambda: ["segmentation_head"],
        metadata={"help": "Modules trained and saved in full; the segmentation head by default."},
    )
    layer_norm_eps: float = field(default=1e-6, metadata={"help": "Epsilon of the prompt layers' LayerNorms."})
    encoder_hidden_size: Optional[int] = field(default=None, metadata={"help": "Hidden size of the encoder."})
    encoder_num_layers: Optional[int] = field(default=None, metadata={"help": "Number of encoder blocks."})
    encoder_block: Optional[str] = field(
        default=None, metadata={"help": "Class of the prompted blocks (SamVisionLayer, Dinov2Layer, ViTLayer ...)."}
    )
    num_labels: Optional[int] = field(default=None, metadata={"help": "Number of classes of the head."})
    id2label: Optional[dict] = field(default=None, metadata={"help": "Class names by id."})
    image_size: Optional[int] = field(default=None, metadata={"help": "Encoder input size used in training."})
    align_corners: Optional[bool] = field(
        default=None,
        metadata={
            "help": "The head's final upsampling of the model the adapter was trained with (True: the reference's). "
            "Adapters saved before this field existed were trained with False."
        },
    )
    modality: Optional[str] = field(default=None, metadata={"help": "Imaging modality, e.g. 'fundus', 'octa'."})
    task: Optional[str] = field(default=None, metadata={"help": "Segmentation task, e.g. 'vessels', 'lesions'."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = LOSAM_PEFT_TYPE
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise LoSamValueError(f"LoSamConfig.reduction must be a positive integer, got {self.reduction!r}")
        if self.id2label is not None:
            self.id2label = normalise_id2label(self.id2label)
            if self.num_labels is None:
                self.num_labels = len(self.id2label)
        if isinstance(self.target_modules, list):
            self.target_modules = list(self.target_modules)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
