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

import gzip
import io
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..errors import DataError, DatasetLayoutError, ImageTooLargeError

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

#: Images larger than this many pixels are refused (PIL's own decompression-bomb limit,
#: ``2 * PIL.Image.MAX_IMAGE_PIXELS`` ~ 179 MP, applies as well: the smaller limit wins).
DEFAULT_MAX_PIXELS = 200_000_000

#: Extensions read as images (case-insensitive); each may also be gzip-compressed (``.ppm.gz``).
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".gif", ".bmp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

_STORABLE_FORMATS = {"PNG", "JPEG", "TIFF", "GIF", "BMP", "PPM"}


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


def _read_source(path: Path, max_pixels: int):
    if str(path).lower().endswith(".gz"):
        # cap the decompressed size: a gzip bomb must not exhaust memory before PIL sees a header
        cap = max_pixels * 8 + (1 << 20)
        with gzip.open(path, "rb") as fh:
            data = fh.read(cap + 1)
        if len(data) > cap:
            raise ImageTooLargeError(f"{path}: decompresses to more than {cap} bytes", path)
        return io.BytesIO(data)
    return path


def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image, or raise :class:`DataError` naming the file.

    Guards against decompression bombs (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`),
    truncated or corrupt files and anything PIL cannot read. gzip-compressed files are accepted.
    """
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(_read_source(path, limit))
            width, height = img.size
            if width * height > limit:
                raise ImageTooLargeError(
                    f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
                    "(possible decompression bomb; raise max_pixels if the image is genuine)",
                    path,
                )
            img.load()
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path}: refused as a possible decompression bomb ({exc})", path) from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found", path) from exc
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError, IndexError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})", path) from exc
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer/float data of any depth to 8 bits, inferring the bit depth from the maximum value."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr)
        top = float(arr.max()) if arr.size else 0.0
        if top <= 1.0:
            return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        arr = np.clip(arr, 0, None).astype(np.uint64)
    arr = np.clip(arr, 0, None).astype(np.uint64)
    top = int(arr.max()) if arr.size else 0
    if top <= 255:
        return arr.astype(np.uint8)
    full = (1 << top.bit_length()) - 1  # e.g. 12-bit data in a 16-bit container -> 4095
    return ((arr * 255 + full // 2) // full).astype(np.uint8)


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
    """Decide how an input image is stored in a dataset.

    Returns ``(as_is, image)``: ``as_is`` is true when the file can be referenced by path (8-bit
    ``L``/``RGB`` in a format PIL decodes natively, not gzip-compressed); otherwise ``image`` is an
    8-bit ``L`` or ``RGB`` version (16-bit and float TIFFs scaled by their bit depth, palette/alpha/CMYK
    converted) to be re-encoded.
    """
    path = Path(path)
    if img.mode in ("L", "RGB") and img.format in _STORABLE_FORMATS and not path.name.lower().endswith(".gz"):
        return True, img
    if img.mode in ("L", "RGB"):
        return False, img
    if img.mode in ("P", "PA"):
        return False, img.convert("RGB")
    if img.mode == "LA":
        return False, img.convert("L")
    if img.mode == "1":
        return False, img.convert("L")
    if img.mode in ("RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return False, img.convert("RGB")
    arr = np.asarray(img)
    arr8 = _to_uint8(arr)
    if arr8.ndim == 3 and arr8.shape[2] > 3:
        arr8 = arr8[..., :3]
    return False, Image.fromarray(np.ascontiguousarray(arr8))


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
    grey = Image.fromarray(_to_uint8(_grey_array(img)))
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
    """PNG bytes of a 2-D ``uint8`` array (labels, FOVs) or an 8-bit PIL image."""
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
