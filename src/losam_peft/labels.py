"""Class names: the one normaliser (and checker) every module uses for ``id2label``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import LoSamValueError

__all__ = ["GENERIC_LABEL_NAME", "is_generic_label", "normalise_id2label", "parse_label_names"]

#: Names that carry no meaning of their own (what a folder without a label description is given): ``foreground``,
#: ``class_2``, ``label 3``, ``LABEL_1`` (transformers' default), ``4``.
GENERIC_LABEL_NAME = re.compile(r"^(foreground|class[_ ]?\d+|label[_ ]?\d+|\d+)$", re.IGNORECASE)


def normalise_id2label(id2label: Mapping | Sequence[str] | None) -> dict[int, str] | None:
    """``{0: "background", 1: "vessel"}`` from a mapping with int or str keys (JSON) or a list of names, sorted by id;
    ``None`` stays ``None``.

    A segmentation needs at least two classes (background and something), ids that are non-negative integers and
    names that are non-empty and unique (metric names such as ``dice_vessel`` are built from them); anything else
    raises :class:`~losam_peft.errors.LoSamValueError` saying what is wrong."""
    if id2label is None:
        return None
    if isinstance(id2label, Mapping):
        try:
            out = {int(k): str(v).strip() for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise LoSamValueError(f"class ids must be integers, got {list(id2label)[:5]}") from None
        if len(out) != len(id2label):
            raise LoSamValueError(f"class ids must be unique, got {list(id2label)[:8]}")
    elif isinstance(id2label, (list, tuple)):
        out = {i: str(v).strip() for i, v in enumerate(id2label)}
    else:
        raise LoSamValueError(f"id2label must be a mapping of class ids to names or a list of names, got {id2label!r}")
    out = dict(sorted(out.items()))
    shown = list(out.values())[:8]
    if len(out) < 2:
        raise LoSamValueError(f"a segmentation needs at least two class names (e.g. background,vessel), got {shown}")
    if any(k < 0 for k in out):
        raise LoSamValueError(f"class ids must be non-negative, got {[k for k in out if k < 0][:5]}")
    if any(not name for name in out.values()):
        raise LoSamValueError(f"class names must not be empty, got {list(out.values())[:8]}")
    seen: dict[str, int] = {}
    repeated = []
    for name in out.values():
        if name.lower() in seen and name not in repeated:
            repeated.append(name)
        seen[name.lower()] = 1
    if repeated:
        raise LoSamValueError(f"class names must be unique, {repeated[:5]} appear more than once in {shown}")
    return out


def parse_label_names(text: str) -> dict[int, str]:
    """``"background,vessel"`` (the ``--labels`` option) -> ``{0: "background", 1: "vessel"}``, checked by
    :func:`normalise_id2label`."""
    names = [n.strip() for n in str(text).split(",")]
    if names and not names[-1]:
        names = names[:-1]  # a trailing comma
    return normalise_id2label(names)


def is_generic_label(name: str) -> bool:
    """Whether ``name`` is a placeholder (:data:`GENERIC_LABEL_NAME`) rather than a class's real name."""
    return bool(GENERIC_LABEL_NAME.match(str(name).strip()))
