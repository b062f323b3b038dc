"""Class names: the one normaliser every module uses for ``id2label``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import LoSamValueError

__all__ = ["normalise_id2label"]


def normalise_id2label(id2label: Mapping | Sequence[str] | None) -> dict[int, str] | None:
    """``{0: "background", 1: "vessel"}`` from a mapping with int or str keys (JSON) or a list of names, sorted by id;
    ``None`` stays ``None``."""
    if id2label is None:
        return None
    if isinstance(id2label, Mapping):
        try:
            out = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise LoSamValueError(f"class ids must be integers, got {list(id2label)[:5]}") from None
    elif isinstance(id2label, (list, tuple)):
        out = {i: str(v) for i, v in enumerate(id2label)}
    else:
        raise LoSamValueError(f"id2label must be a mapping of class ids to names or a list of names, got {id2label!r}")
    return dict(sorted(out.items()))
