"""Names and numbers used across the package, each defined once.

File names are PEFT's and transformers' own constants, so adapters and models written here are what those libraries
expect.
"""

from __future__ import annotations

from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from peft.utils.constants import WEIGHTS_NAME as ADAPTER_PICKLE_NAME
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

__version__ = "0.1.0"

#: label value that the loss and the metrics leave out (padding, unlabelled pixels)
IGNORE_INDEX = 255
#: the model card of an adapter or dataset folder
CARD_NAME = "README.md"
#: the supported PEFT releases (stated once; pyproject.toml's dependency says the same)
SUPPORTED_PEFT = ">=0.21,<0.22"

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_PICKLE_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "CARD_NAME",
    "CONFIG_NAME",
    "IGNORE_INDEX",
    "IMAGE_PROCESSOR_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "SUPPORTED_PEFT",
    "__version__",
]
