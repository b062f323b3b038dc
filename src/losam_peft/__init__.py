"""losam-peft: Learnable Ophthalmology SAM as a PEFT adapter on transformers' SAM image encoder (or DINOv2's, ViT's).

Importing the package registers the "LOSAM" PEFT type (so ``peft.get_peft_model``/``PeftModel.from_pretrained`` know
``LoSamConfig``) and the Auto classes (``AutoConfig``, ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``
for the ``LoSamSegmentationConfig`` checkpoints written by this package).
"""

from __future__ import annotations

from .adapters import load_adapter, save_adapter
from .bases import load_base_model
from .configuration_losam import LOSAM_MODEL_TYPE, LoSamSegmentationConfig
from .configuration_losam_backbones import (
    LoSamDinov2SegmentationConfig,
    LoSamDinov2WithRegistersSegmentationConfig,
    LoSamViTMAESegmentationConfig,
    LoSamViTSegmentationConfig,
)
from .constants import __version__  # noqa: F401  (the package version)
from .fast_path import default_autocast_dtype, disable_fast_path, enable_fast_path, fast_path_enabled
from .image_processing_losam import LoSamImageProcessor
from .metrics import (
    SegmentationMetricAccumulator,
    format_paper_table,
    segmentation_metrics,
)
from .model_card import install_peft_card_extension
from .modeling_losam import (
    LoSamSegmentationHead,
    SamForSemanticSegmentation,
    count_parameters,
    sam_vision_config,
)
from .modeling_losam_backbones import (
    BACKBONE_MODELS,
    Dinov2ForLoSamSegmentation,
    Dinov2WithRegistersForLoSamSegmentation,
    ViTForLoSamSegmentation,
    ViTMAEForLoSamSegmentation,
)
from .pipeline import LoSamPipeline, SegmentationResult
from .tuner import (
    LOSAM_PEFT_TYPE,
    LoSamConfig,
    LoSamLayer,
    LoSamModel,
    LoSamPromptLayer,
)


def _register_auto_classes() -> None:
    # The package's own config class (model_type "losam_sam_segmentation") is what maps to its classes; transformers'
    # SamVisionConfig keeps mapping to transformers' SAM.
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
    )

    def register_image_processor(config_class) -> None:
        try:
            AutoImageProcessor.register(config_class, image_processor_classes={"pil": LoSamImageProcessor}, exist_ok=True)
        except ImportError:
            # transformers releases whose AutoImageProcessor needs torchvision (5.17 does) make it a placeholder that
            # raises when torchvision is missing; nothing can load an image processor through it there, so there is
            # nothing to register (LoSamImageProcessor itself still works)
            pass

    AutoConfig.register(LOSAM_MODEL_TYPE, LoSamSegmentationConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(LoSamSegmentationConfig, SamForSemanticSegmentation, exist_ok=True)
    register_image_processor(LoSamSegmentationConfig)
    # the DINOv2 / ViT segmentation models, each under a model_type of its own
    for model_class in BACKBONE_MODELS:
        config_class = model_class.config_class
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForSemanticSegmentation.register(config_class, model_class, exist_ok=True)
        register_image_processor(config_class)


_register_auto_classes()
install_peft_card_extension()  # plain PeftModel.save_pretrained writes a card with the losam tags too

__all__ = [
    "LOSAM_MODEL_TYPE",
    "LOSAM_PEFT_TYPE",
    "LoSamConfig",
    "LoSamSegmentationConfig",
    "LoSamDinov2SegmentationConfig",
    "LoSamDinov2WithRegistersSegmentationConfig",
    "LoSamViTSegmentationConfig",
    "LoSamViTMAESegmentationConfig",
    "Dinov2ForLoSamSegmentation",
    "Dinov2WithRegistersForLoSamSegmentation",
    "ViTForLoSamSegmentation",
    "ViTMAEForLoSamSegmentation",
    "load_base_model",
    "LoSamImageProcessor",
    "LoSamLayer",
    "LoSamModel",
    "LoSamPipeline",
    "SegmentationResult",
    "SegmentationMetricAccumulator",
    "format_paper_table",
    "load_adapter",
    "save_adapter",
    "segmentation_metrics",
    "LoSamPromptLayer",
    "LoSamSegmentationHead",
    "SamForSemanticSegmentation",
    "count_parameters",
    "default_autocast_dtype",
    "disable_fast_path",
    "enable_fast_path",
    "fast_path_enabled",
    "sam_vision_config",
]
