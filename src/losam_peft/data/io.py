"""Robust reading of retinal images and masks as real downloads ship them.

Everything here works on one file at a time and raises :class:`DataError` (naming the file) on
anything that would otherwise become a silently wrong label: unreadable or truncated files,
decompression-bomb sized images, masks whose values fall outside the dataset's map.

Mask conventions
----------------
* *binary* masks (vessels, FOV, one lesion type): the mask must hold at most two values; the brighter
  one is foreground (``0/1``, ``0/255``, ``0/65535``; DRIVE's palette GIFs whose two colours are
  (4, 2, 4) and (252, 254, 252)). Palette masks are read through their palette, RGB(A) masks through the
  maximum over colour channels (IDRiD ships red-on-black TIFFs). A mask of a single value is all
  background if that value is 0 (for palette masks: a dark colour), all foreground otherwise. More than
  two values is an error, unless a ``threshold`` is given (``value >= threshold`` is foreground), e.g.
  for JPEG-compressed masks.
* *value-mapped* masks (AROI layers): ``values`` maps the stored value (grey level, or palette index for
  palette images) to a class id; an RGB mask must be grey (three equal channels) unless the map's keys
  are ``(r, g, b)`` colours. A value outside the map is an error.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, PngImagePlugin

from ..errors import DataError, DatasetLayoutError, ImageTooLargeError, LoSamValueError
from ..image_processing_losam import (  # open_image and DEFAULT_MAX_PIXELS are re-exported from here
    BIT_DEPTH_KEY,
    DEFAULT_MAX_PIXELS,
    open_image,
    storable_image,
    to_rgb8,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "DatasetLayoutError",
    "ImageTooLargeError",
    "SkippedFileWarning",
    "binary_mask",
    "derive_fov",
    "encode_png",
    "mask_to_classes",
    "open_image",
    "split_image_name",
    "to_storable",
]

#: Extensions read as images (case-insensitive); each may also be gzip-compressed (``.ppm.gz``).
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".gif", ".bmp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

_STORABLE_FORMATS = {"PNG", "JPEG", "TIFF", "GIF", "BMP", "PPM"}
_EXIF_ORIENTATION = 0x0112


class SkippedFileWarning(UserWarning):
    """Emitted once per sample skipped with ``skip_bad=True``, and once with the final count."""


def split_image_name(name: str) -> tuple[str, str] | None:
    """``"21_training.TIF" -> ("21_training", ".tif")``; ``"im0001.ah.ppm.gz" -> ("im0001.ah", ".ppm.gz")``.

    Returns ``None`` for names that are not images (``Thumbs.db``, ``.DS_Store``, ``notes.xlsx`` ...).
    """
    lower = name.lower()
    gz = lower.endswith(".gz")
    base = lower[:-3] if gz else lower
    for ext in IMAGE_EXTENSIONS:
        if base.endswith(ext) and len(base) > len(ext):
            stem = name[: len(base) - len(ext)]
            return stem, ext + (".gz" if gz else "")
    return None


def _grey_array(img: Image.Image) -> np.ndarray:
    """Single-channel numeric view of a mask. Palette -> colours; colour -> max over channels."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode != "LA" else "L")
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr


def to_storable(img: Image.Image, path: str | os.PathLike) -> tuple[bool, Image.Image]:
    """Decide how an input image is stored in a dataset, so that the image processor decodes the stored image to
    exactly the pixels it decodes the original file to.

    Returns ``(as_is, image)``: ``as_is`` is true when the file can be referenced by path (8-bit ``L``/``RGB`` in a
    format PIL decodes natively, not gzip-compressed, with no EXIF rotation, which ``datasets`` would apply);
    otherwise ``image`` is to be re-encoded with :func:`encode_png`: 8-bit ``L``/``RGB`` after palette, alpha, CMYK…
    conversion, 16-bit (and 12-bit-in-16) grey data untouched as ``I;16``, float data as ``I;16`` of
    ``round(v * 65535)`` (see ``losam_peft.image_processing_losam.storable_image``).
    """
    path = Path(path)
    if img.mode in ("L", "RGB"):
        rotated = img.getexif().get(_EXIF_ORIENTATION) not in (None, 1)
        as_is = img.format in _STORABLE_FORMATS and not path.name.lower().endswith(".gz") and not rotated
        return as_is, img
    try:
        return False, storable_image(img)
    except LoSamValueError as exc:
        raise DataError(f"{path}: {exc}", path) from None


def binary_mask(img: Image.Image, path: str | os.PathLike, threshold: float | None = None) -> np.ndarray:
    """Boolean foreground of a two-valued mask (see module docstring); errors name ``path``."""
    arr = _grey_array(img)
    if threshold is not None:
        return arr >= threshold
    values = np.unique(arr)
    if values.size == 1:
        dark = values[0] <= 127 if img.mode in ("P", "PA") else values[0] == 0
        return np.full(arr.shape, not dark)
    if values.size == 2:
        return arr == values[1]
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
    raise DataError(
        f"{path}: mask values {{{shown}}} are not binary (expected two values such as 0/1 or 0/255); "
        "pass mask_threshold=... if the mask is lossy-compressed",
        path,
    )


def _value_array(img: Image.Image, path: Path, colour_keys: bool) -> np.ndarray:
    if colour_keys:
        arr = np.asarray(img.convert("RGB"))
        return (arr[..., 0].astype(np.uint32) << 16) | (arr[..., 1].astype(np.uint32) << 8) | arr[..., 2]
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else ("L" if img.mode == "LA" else "P"))
    arr = np.asarray(img)
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(f"{path}: colour mask where a grey mask of class values was expected", path)
        arr = arr[..., 0]
    return arr


def mask_to_classes(
    img: Image.Image,
    path: str | os.PathLike,
    *,
    class_id: int = 1,
    values: Mapping | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Class-id array (``uint8``) of one mask file.

    Binary masks (``values is None``) give ``class_id`` on the foreground; value-mapped masks go through
    ``values`` (keys: stored values or ``(r, g, b)`` colours). Values outside the map raise
    :class:`DataError` naming ``path`` and the offending values.
    """
    path = Path(path)
    if values is None:
        return binary_mask(img, path, threshold).astype(np.uint8) * np.uint8(class_id)
    colour_keys = any(isinstance(k, tuple) for k in values)
    arr = _value_array(img, path, colour_keys)
    if colour_keys:
        table = {(int(k[0]) << 16) | (int(k[1]) << 8) | int(k[2]): int(v) for k, v in values.items()}
    else:
        table = {int(k): int(v) for k, v in values.items()}
    present = np.unique(arr)
    unknown = [int(v) for v in present if int(v) not in table]
    if unknown:
        if colour_keys:
            unknown_txt = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown[:8])
        else:
            unknown_txt = ", ".join(str(v) for v in unknown[:8])
        raise DataError(
            f"{path}: mask value(s) {unknown_txt}{', ...' if len(unknown) > 8 else ''} outside the "
            f"dataset's label map (expected {sorted(values)})",
            path,
        )
    out = np.zeros(arr.shape, dtype=np.uint8)
    for value in present:
        out[arr == value] = table[int(value)]
    return out


def derive_fov(img: Image.Image) -> np.ndarray:
    """Approximate field of view of a colour fundus photograph (boolean array).

    The retina is the bright disc on a dark background: threshold a smoothed max-over-channels image at
    10 % of its 99th percentile (at least 8 grey levels), then fill each row between its first and last
    inside pixel so that dark structures inside the disc stay inside.
    """
    grey = Image.fromarray(to_rgb8(img).max(axis=2))  # the decoder's 8-bit rendering
    smooth = np.asarray(grey.filter(ImageFilter.BoxBlur(3)))
    level = max(8.0, 0.1 * float(np.percentile(smooth, 99)))
    inside = smooth > level
    rows = np.flatnonzero(inside.any(axis=1))
    fov = np.zeros_like(inside)
    for r in rows:
        cols = np.flatnonzero(inside[r])
        fov[r, cols[0] : cols[-1] + 1] = True
    return fov


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a 2-D ``uint8`` array (labels, FOVs) or a PIL image (8-bit, or ``I;16`` from
    :func:`to_storable`, whose bit depth is kept in a ``losam:bit-depth`` text chunk)."""
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    options = {}
    if BIT_DEPTH_KEY in img.info:
        text = PngImagePlugin.PngInfo()
        text.add_text(BIT_DEPTH_KEY, str(img.info[BIT_DEPTH_KEY]))
        options["pnginfo"] = text
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3, **options)
    return buf.getvalue()
