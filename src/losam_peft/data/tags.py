"""Short modality and task tags (``fundus``, ``octa``, ``oct``; ``vessels``, ``lesions``, ``layers``).

Adapter configs, model cards and Hub tags use these; dataset descriptions and users may spell them many ways.
"""

from __future__ import annotations

import re

__all__ = ["normalise_modality", "normalise_task"]

_MODALITY_ALIASES = {
    "fundus": "fundus",
    "cfp": "fundus",
    "color-fundus": "fundus",
    "colour-fundus": "fundus",
    "fundus-photography": "fundus",
    "retinal-fundus": "fundus",
    "octa": "octa",
    "oct-a": "octa",
    "oct-angiography": "octa",
    "oct": "oct",
    "oct-b-scan": "oct",
    "b-scan": "oct",
}
_TASK_ALIASES = {
    "vessels": "vessels",
    "vessel": "vessels",
    "vessel-segmentation": "vessels",
    "vasculature": "vessels",
    "lesions": "lesions",
    "lesion": "lesions",
    "lesion-segmentation": "lesions",
    "layers": "layers",
    "layer": "layers",
    "retinal-layers": "layers",
    "layer-segmentation": "layers",
}

def normalise_modality(value: str | None) -> str | None:
    """``"Colour fundus"`` -> ``"fundus"``, ``"OCT-A"`` -> ``"octa"``; unknown values are slugged, ``None`` stays."""
    return _normalise(value, _MODALITY_ALIASES)


def normalise_task(value: str | None) -> str | None:
    """``"vessel"`` -> ``"vessels"``, ``"retinal layers"`` -> ``"layers"``; unknown values are slugged."""
    return _normalise(value, _TASK_ALIASES)


def _normalise(value, aliases) -> str | None:
    if value is None or not str(value).strip():
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", str(value).strip().lower()).strip("-")
    return aliases.get(slug, slug) or None
