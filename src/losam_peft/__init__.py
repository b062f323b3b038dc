"""losam-peft: Learnable Ophthalmology SAM as a PEFT adapter on transformers' SAM image encoder.

Importing the package registers the "LOSAM" PEFT type (so ``peft.get_peft_model``/``PeftModel.from_pretrained`` know
``LoSamConfig``) and the Auto classes (``AutoConfig``, ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``
for the ``LoSamSegmentationConfig`` checkpoints written by this package).
"""

from __future__ import annotations

from .adapters import load_adapter, save_adapter
from .configuration_losam import LOSAM_MODEL_TYPE, LoSamSegmentationConfig
from .constants import __version__  # noqa: F401  (the package version)
from .fast_path import default_autocast_dtype, disable_fast_path, enable_fast_path, fast_path_enabled
from .image_processing_losam import LoSamImageProcessor
from .metrics import (
    SegmentationMetricAccumulator,
    format_paper_table,
    segmentation_metrics,
)
from .modeling_losam import (
    LoSamSegmentationHead,
    SamForSemanticSegmentation,
    count_parameters,
    sam_vision_config,
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

    AutoConfig.register(LOSAM_MODEL_TYPE, LoSamSegmentationConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(LoSamSegmentationConfig, SamForSemanticSegmentation, exist_ok=True)
    AutoImageProcessor.register(
        LoSamSegmentationConfig, image_processor_classes={"pil": LoSamImageProcessor}, exist_ok=True
    )


_register_auto_classes()

__all__ = [
    "LOSAM_MODEL_TYPE",
    "LOSAM_PEFT_TYPE",
    "LoSamConfig",
    "LoSamSegmentationConfig",
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
