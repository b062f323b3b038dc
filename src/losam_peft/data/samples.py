"""Labelled samples for training and evaluation, from files, folders or loaded datasets.

A :class:`Sample` is one image with its class-id map (255 = ignore) and optional field of view. Masks read from
files follow one rule: a two-valued mask (0/255, 0/1, 1-bit, DRIVE-style palettes) is background/foreground; a
grey or palette mask with more values holds class ids; an RGB mask must use losam-peft's own label palette (the one
``losam predict`` writes). Anything else is an error naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX
from ..image_processing_losam import decode_array
from ..visualization import palette
from .io import DataError, binary_mask, open_image
from .loaders import label_info


@dataclass
class Sample:
    """One labelled image: ``image`` (H×W[×C]), ``label`` (H×W class ids, 255 = ignore), optional ``fov``.

    Samples read from files or datasets hold the image decoder's result
    (``losam_peft.image_processing_losam.decode_array``): uint8 for 8-bit sources, float32 in [0, 1] otherwise, so
    that the image processor sees the same pixels as for the original file."""

    image: np.ndarray
    label: np.ndarray
    id: str = ""
    fov: np.ndarray | None = None

    def __post_init__(self):
        self.image = np.asarray(self.image)
        self.label = np.asarray(self.label)
        if self.label.ndim != 2:
            raise DataError(f"sample {self.id!r}: the label must be a 2-D class-id map, got shape {self.label.shape}")
        if tuple(self.image.shape[:2]) != tuple(self.label.shape):
            raise DataError(
                f"sample {self.id!r}: the image is {self.image.shape[1]}×{self.image.shape[0]} pixels but its mask is "
                f"{self.label.shape[1]}×{self.label.shape[0]}"
            )
        if self.fov is not None:
            self.fov = np.asarray(self.fov).astype(bool)
            if self.fov.shape != self.label.shape:
                raise DataError(f"sample {self.id!r}: the FOV mask is {self.fov.shape}, the label {self.label.shape}")


def read_mask(path: str | os.PathLike, num_labels: int | None = None) -> np.ndarray:
    """Class ids (uint8) of a mask file, by the rule in the module docstring."""
    path = Path(path)
    image = open_image(path)
    if image.mode in ("RGB", "RGBA") and not _is_grey(image):
        return _rgb_to_classes(np.asarray(image.convert("RGB")), path, num_labels)
    values = np.unique(np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "LA") else image))
    if values.size <= 2:
        return binary_mask(image, path).astype(np.uint8)
    array = np.asarray(image if image.mode in ("P", "L", "I;16", "I") else image.convert("L")).astype(np.int64)
    limit = num_labels if num_labels is not None else IGNORE_INDEX
    bad = np.unique(array[(array >= limit) & (array != IGNORE_INDEX)])
    if bad.size:
        raise DataError(
            f"{path}: mask values {bad[:8].tolist()} are outside the label set 0..{limit - 1} (255 = ignore); "
            "multi-class masks must store class ids",
            path,
        )
    return array.astype(np.uint8)


def _is_grey(image) -> bool:
    rgb = np.asarray(image.convert("RGB"))
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def _rgb_to_classes(rgb: np.ndarray, path: Path, num_labels: int | None) -> np.ndarray:
    colours = palette(max(num_labels or 0, 16))
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lookup = {(int(r) << 16) | (int(g) << 8) | int(b): index for index, (r, g, b) in enumerate(colours)}
    out = np.full(codes.shape, 255, np.uint8)
    unknown = []
    for code in np.unique(codes):
        if int(code) in lookup and (num_labels is None or lookup[int(code)] < num_labels):
            out[codes == code] = lookup[int(code)]
        else:
            unknown.append(f"#{int(code):06x}")
    if unknown:
        raise DataError(
            f"{path}: RGB mask colours {unknown[:6]} are not in losam-peft's label palette; store masks as class ids "
            "(grey or palette PNG) or 0/255 for binary masks",
            path,
        )
    return out


def read_pair(
    image_path: str | os.PathLike, mask_path: str | os.PathLike, num_labels: int | None = None, id: str | None = None
) -> Sample:
    """A labelled sample from an image file and its mask file; checks both exist and have the same size.

    The image is decoded by the image processor's decoder (CMYK, palette, 16-bit and float images included), so
    training on it sees the pixels that prediction on the same file sees."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if not path.is_file():
            raise DataError(f"{path}: the training {what} does not exist", path)
    image, _ = decode_array(image_path)
    label = read_mask(mask_path, num_labels)
    if image.shape[:2] != label.shape:
        raise DataError(
            f"{mask_path}: the mask is {label.shape[1]}×{label.shape[0]} pixels but the image {image_path.name} is "
            f"{image.shape[1]}×{image.shape[0]}",
            mask_path,
        )
    return Sample(image, label, id or image_path.stem)


def samples_from_dataset(dataset) -> list[Sample]:
    """Samples from a ``datasets.Dataset`` with ``image``/``label`` (and optional ``fov``/``id``) columns."""
    if len(dataset) == 0:
        raise DataError("the dataset is empty")
    missing = {"image", "label"} - set(dataset.column_names)
    if missing:
        raise DataError(f"the dataset has no {', '.join(sorted(missing))} column (columns: {dataset.column_names})")
    return [sample_from_row(row, index) for index, row in enumerate(dataset)]


def sample_from_row(row, index: int = 0) -> Sample:
    """One :class:`Sample` from a dataset row (``image``, ``label``, optional ``fov`` and ``id``)."""
    fov = row.get("fov")
    label = np.asarray(row["label"])
    if label.ndim == 3:
        label = label[..., 0]
    return Sample(
        image=decode_array(row["image"])[0],
        label=label,
        id=str(row.get("id", index)),
        fov=(np.asarray(fov) > 0) if fov is not None else None,
    )


def id2label_of(dataset) -> dict[int, str] | None:
    """Label names stored with a dataset by the loaders or the synthetic generator."""
    try:
        return label_info(dataset)
    except Exception:
        return None
