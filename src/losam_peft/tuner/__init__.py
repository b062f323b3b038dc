"""The LoSAM PEFT method: config, tuner layer and tuner model, registered with PEFT on import."""

from .config import LOSAM_PEFT_TYPE, LoSamConfig
from .layer import LoSamLayer, LoSamPromptLayer
from .model import LoSamModel
from .registration import register_losam_peft_type

register_losam_peft_type()

__all__ = [
    "LOSAM_PEFT_TYPE",
    "LoSamConfig",
    "LoSamLayer",
    "LoSamModel",
    "LoSamPromptLayer",
    "register_losam_peft_type",
]
