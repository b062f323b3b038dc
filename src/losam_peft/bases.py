"""One loader for every supported base model: the segmentation model class is picked from the checkpoint's config.

    load_base_model("facebook/sam-vit-base", id2label=...)     -> SamForSemanticSegmentation
    load_base_model("facebook/dinov2-small", id2label=...)     -> Dinov2ForLoSamSegmentation
    load_base_model("path/to/converted-medsam", ...)           -> SamForSemanticSegmentation (``losam convert``)

Training, the pipeline and the comparison baselines load their ``--base`` through here, so any supported kind works
there unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .configuration_losam import LOSAM_MODEL_TYPE, SAM_MODEL_TYPE, SAM_VISION_MODEL_TYPE
from .constants import CONFIG_NAME
from .errors import CheckpointError
from .loading import resolve_file
from .modeling_losam import SamForSemanticSegmentation
from .modeling_losam_backbones import BACKBONE_MODELS, backbone_model_class

SAM_MODEL_TYPES = (LOSAM_MODEL_TYPE, SAM_MODEL_TYPE, SAM_VISION_MODEL_TYPE)


def supported_model_types() -> list[str]:
    types = list(SAM_MODEL_TYPES)
    for cls in BACKBONE_MODELS:
        types += [cls.config_class.encoder_model_type, cls.config_class.model_type]
    return types


def base_model_class(source: str | os.PathLike, subfolder: str = "", **hub_kwargs) -> type:
    """The segmentation model class for the checkpoint ``source`` (a local folder or a Hub id), from the
    ``model_type`` in its ``config.json``."""
    path = resolve_file(str(source), CONFIG_NAME, subfolder=subfolder, **hub_kwargs)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the configuration ({err})", path) from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type in SAM_MODEL_TYPES:
        return SamForSemanticSegmentation
    model_class = backbone_model_class(model_type)
    if model_class is None:
        raise CheckpointError(
            f"{source}: not a supported base model (model_type={model_type!r}); supported: SAM "
            f"({', '.join(SAM_MODEL_TYPES)}), DINOv2 ('dinov2', 'dinov2_with_registers'), ViT ('vit', 'vit_mae'), "
            "or a folder written by losam_peft (including `losam convert sam-checkpoint`)",
            path,
        )
    return model_class


def load_base_model(source: str | os.PathLike, **kwargs):
    """``<the right class>.from_pretrained(source, **kwargs)``: ``SamForSemanticSegmentation`` for SAM checkpoints,
    ``Dinov2ForLoSamSegmentation``/``ViTForLoSamSegmentation``/… for DINOv2 and ViT ones. The keyword arguments are
    those of ``SamForSemanticSegmentation.from_pretrained`` (``id2label``, ``num_labels``, ``image_size``,
    ``use_fast_path``, ``revision``, ``token``, ``cache_dir``, ``local_files_only``…)."""
    hub = {k: kwargs.get(k) for k in ("revision", "token", "cache_dir", "local_files_only") if kwargs.get(k) is not None}
    model_class = base_model_class(source, subfolder=kwargs.get("subfolder") or "", **hub)
    return model_class.from_pretrained(source, **kwargs)


__all__ = ["SAM_MODEL_TYPES", "base_model_class", "load_base_model", "supported_model_types"]
