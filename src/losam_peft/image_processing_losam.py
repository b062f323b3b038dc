"""``LoSamImageProcessor``: images of any kind in, ``pixel_values`` out, and label maps back at the original size.

Two geometries:
- ``mode="sam"`` (default): the longest side is resized to ``image_size``, the image is normalised with SAM's own
  ImageNet mean/std and zero-padded at the bottom/right to a square, as SAM was pretrained. The aspect ratio is kept.
- ``mode="paper"``: the reference implementation's input: a plain resize to a square and mean/std 0.5.

The one decoder
---------------
Every way into the package (``LoSamPipeline``, ``losam predict``, the processor, one-shot ``--train-image``, the
dataset loaders and ``losam data convert``) turns an image into float RGB with :func:`decode_image`, so the same file
gives the same pixels whichever way it comes in. Inputs may be files (guarded by :func:`open_image`), PIL images
(L, RGB, RGBA, P, PA, LA, CMYK, 1, I;16*, I, F, YCbCr, LAB, HSV), numpy arrays (H×W, H×W×1/2/3/4, or channels
first; bool, uint8, other integers or floats) or torch tensors (C×H×W or H×W). The rules:

- colour: palette images go through their palette, CMYK/YCbCr/LAB/HSV are converted to RGB by PIL, grey is
  replicated to three channels, alpha (the 4th/2nd channel) is ignored;
- uint8 (and bool, 1-bit) data is divided by 255 (bool by 1);
- other integers are scaled by their bit depth: 12-bit (/4095) when no value exceeds 4095, else 16-bit (/65535),
  else by the image's peak; negative values are an error. A 16-bit PNG written by :func:`storable_image` says its
  depth in a ``losam:bit-depth`` text chunk, which is honoured (so a dark stored float image is not read as 12-bit);
- floats: values that are not finite (nan, ±inf) are set to 0 and left out of every decision (and counted in the
  note). Finite values within [0, 1] are kept, within [0, 255] divided by 255; otherwise the same two tests are
  made on the robust range (0.1th to 99.9th percentile, so that a single outlier cannot crush the image: outliers
  are clipped and counted), and if those fail too the image is min-max scaled over that range.

:func:`decode_image` also returns a note saying what was converted ("CMYK converted to RGB", "16-bit image scaled by
its bit depth (12-bit)", "alpha channel ignored", "palette converted to RGB", "first of 3 frames used", …) or "".
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .constants import IGNORE_INDEX  # noqa: F401  (re-exported)
from .errors import DataError, ImageTooLargeError, LoSamValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_MEAN = (0.5, 0.5, 0.5)
PAPER_STD = (0.5, 0.5, 0.5)
MODES = ("sam", "paper")

#: Images larger than this many pixels are refused (PIL's own decompression-bomb limit,
#: ``2 * PIL.Image.MAX_IMAGE_PIXELS`` ~ 179 MP, applies as well: the smaller limit wins).
DEFAULT_MAX_PIXELS = 200_000_000

#: PNG text chunk in which :func:`storable_image` records the bit depth ("12" or "16") of a 16-bit image.
BIT_DEPTH_KEY = "losam:bit-depth"

_BIT_DEPTHS = {"12": 4095, "16": 65535}
_OUTLIER_QUANTILES = (0.001, 0.999)


# -- files -----------------------------------------------------------------------------------------------------------
#: bytes one pixel can take in an image file at most (RGBA, 16 bits a channel), and the room allowed for headers
_MAX_BYTES_PER_PIXEL, _HEADER_ROOM = 8, 1 << 20


def _read_gzip(path: Path, max_pixels: int) -> io.BytesIO:
    """A ``.gz`` image inflated while streaming, refused before it is held in memory when it inflates to more than
    its own header's pixels can fill (a gzip bomb: a small file that inflates to gigabytes) or than ``max_pixels``."""
    cap = max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_ROOM
    chunks, total = [], 0
    with gzip.open(path, "rb") as fh:
        head = fh.read(_HEADER_ROOM)
        chunks.append(head)
        total = len(head)
        try:  # the header alone gives the size the rest of the file may take
            width, height = Image.open(io.BytesIO(head)).size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(possible decompression bomb; raise max_pixels if the image is genuine)",
                    path,
                )
            cap = min(cap, width * height * _MAX_BYTES_PER_PIXEL + _HEADER_ROOM)
        except (OSError, SyntaxError, ValueError):
            pass  # no readable header in the first megabyte: the general cap applies, and PIL says what is wrong
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise ImageTooLargeError(
                    f"{path}: inflates to more than {cap} bytes, more than its image can hold (possible gzip bomb)",
                    path,
                )
            chunks.append(chunk)
    return io.BytesIO(b"".join(chunks))


def _read_source(path: Path, max_pixels: int):
    if str(path).lower().endswith(".gz"):
        return _read_gzip(path, max_pixels)
    # read the file in one go and close it: PIL keeps a file it opened itself open after ``load()`` for formats
    # that may hold several frames (GIF, TIFF), which leaks a handle (a ResourceWarning) per image
    with open(path, "rb") as fh:
        return io.BytesIO(fh.read())


def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file, or raise :class:`DataError` naming the file.

    Guards against decompression bombs (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`),
    truncated or corrupt files, folders and anything PIL cannot read. gzip-compressed files are accepted.
    """
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image", path)
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


# -- the decoder -----------------------------------------------------------------------------------------------------
def decode_image(image, max_pixels: int | None = None) -> tuple[torch.Tensor, str]:
    """``(pixels, note)``: a (3, H, W) float32 tensor in [0, 1] from a file path, PIL image, numpy array or tensor,
    by the rules in the module docstring, and a note saying what was converted ("" when nothing was)."""
    array, note = decode_array(image, max_pixels=max_pixels)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if array.dtype == np.uint8:
        tensor = tensor / 255.0
    if tensor.dim() == 2:
        tensor = tensor[None].expand(3, -1, -1)
    else:
        tensor = tensor.permute(2, 0, 1)
    return tensor.contiguous(), note


def decode_array(image, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """The decoder's result in its most compact exact form: ``(array, note)``, ``array`` H×W (grey) or H×W×3 (RGB),
    uint8 when the source is 8-bit (its pixels are ``array / 255``), otherwise float32 in [0, 1]. Feeding ``array``
    back to :func:`decode_image` (or the processor) gives exactly the pixels :func:`decode_image` gives for
    ``image``; :class:`~losam_peft.data.samples.Sample` images hold this."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        pil = open_image(path, max_pixels)
        try:
            return decode_array(pil)
        except LoSamValueError as exc:
            raise DataError(f"{path}: {exc}", path) from None
    array, hint, notes, quiet_unit = _canonical(image)
    if array.dtype == np.uint8:
        values = array
    elif array.dtype == np.bool_:
        values = array.astype(np.uint8) * np.uint8(255)
    else:
        values, scale_notes = _scale_to_unit(array, hint, quiet_unit)
        notes.extend(scale_notes)
    frames = getattr(image, "n_frames", 1) if isinstance(image, Image.Image) else 1
    if isinstance(frames, int) and frames > 1:
        notes.append(f"first of {frames} frames used")
    return values, "; ".join(notes)


def to_float_rgb(image) -> torch.Tensor:
    """A (3, H, W) float32 tensor in [0, 1] from a file path, PIL image, numpy array or tensor (:func:`decode_image`
    without the note)."""
    return decode_image(image)[0]


def to_rgb8(image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB rendering of anything :func:`decode_image` accepts (16-bit, float and CMYK included),
    e.g. for drawing overlays."""
    array, _ = decode_array(image)
    if array.dtype != np.uint8:
        array = (array * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array)


def storable_image(image) -> Image.Image:
    """A PIL image that can be written as PNG and decodes to the same pixels as ``image``.

    8-bit grey/colour data (after palette, CMYK, alpha… conversion) becomes an ``L``/``RGB`` image: exact. Integer
    grey data of up to 16 bits is kept untouched as ``I;16`` (exact); float grey data (and integers beyond 16 bits)
    becomes ``I;16`` of ``round(v * 65535)`` (within 1/131070). Both carry their bit depth in
    ``info[BIT_DEPTH_KEY]``, which the PNG writer must store as a text chunk
    (``losam_peft.data.io.encode_png`` does). Multi-channel data deeper than 8 bits, which PIL cannot write, becomes
    the decoder's 8-bit rendering.
    """
    array, hint, _, _ = _canonical(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.integer) and array.ndim == 2 and array.size:
        low, peak = int(array.min()), int(array.max())
        if low >= 0 and peak <= 65535:
            depth = _integer_depth(peak, hint)
            stored = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
            stored.info[BIT_DEPTH_KEY] = "12" if depth == 4095 else "16"
            return stored
    values, _ = _scale_to_unit(array, hint, True)
    if values.ndim == 2:
        stored = Image.fromarray(np.round(values.astype(np.float64) * 65535.0).astype(np.uint16))
        stored.info[BIT_DEPTH_KEY] = "16"
        return stored
    return Image.fromarray(np.round(values.astype(np.float64) * 255.0).astype(np.uint8))


def _canonical(image) -> tuple[np.ndarray, int | None, list[str], bool]:
    """``(array, depth_hint, notes, quiet_unit)``: the image as an H×W or H×W×3 array of its own dtype, before any
    scaling; ``quiet_unit`` is true for arrays and tensors (floats in [0, 1] there need no note)."""
    if isinstance(image, Image.Image):
        return _canonical_pil(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 2, 3, 4):
            raise LoSamValueError(f"image tensors must be (C, H, W) with 1, 3 or 4 channels, got {tuple(tensor.shape)}")
        return _canonical_numpy(tensor.permute(1, 2, 0).numpy())
    return _canonical_numpy(np.asarray(image))


def _canonical_pil(image: Image.Image) -> tuple[np.ndarray, int | None, list[str], bool]:
    mode, notes, hint = image.mode, [], None
    if mode in ("L", "RGB"):
        pass
    elif mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image, notes = image.convert("RGB"), ["palette converted to RGB"]
    elif mode == "PA":
        image, notes = image.convert("RGBA").convert("RGB"), ["palette converted to RGB", "alpha channel ignored"]
    elif mode in ("LA", "La"):
        image, notes = image.getchannel(0), ["alpha channel ignored"]
    elif mode in ("RGBA", "RGBa"):
        image, notes = image.convert("RGB"), ["alpha channel ignored"]
    elif mode == "RGBX":
        image = image.convert("RGB")
    elif mode == "CMYK":
        image, notes = image.convert("RGB"), ["CMYK converted to RGB"]
    elif mode.startswith("I;16") or mode == "I":
        array = np.asarray(image)
        array = array.astype(np.uint16 if mode != "I" else np.int32, copy=False)
        hint = _BIT_DEPTHS.get(str(image.info.get(BIT_DEPTH_KEY, "")))
        return array, hint, notes, False
    elif mode == "F":
        return np.asarray(image, dtype=np.float32), None, notes, False
    else:  # YCbCr, LAB, HSV and anything else PIL can convert
        try:
            converted = image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise LoSamValueError(f"cannot convert an image of mode {mode} to RGB ({exc})") from None
        image, notes = converted, [f"{mode} converted to RGB"]
    return np.asarray(image), hint, notes, False


def _canonical_numpy(array: np.ndarray) -> tuple[np.ndarray, int | None, list[str], bool]:
    notes = []
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first numpy
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop alpha
        notes.append("alpha channel ignored")
        if array.shape[-1] == 1:
            array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise LoSamValueError(f"cannot read an image of shape {array.shape}; expected H×W or H×W×(1|3|4)")
    if array.size == 0:
        raise LoSamValueError("empty image")
    if array.dtype.kind not in "buif":
        raise LoSamValueError(f"unsupported image dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, None, notes, True


def _integer_depth(peak: int, hint: int | None) -> int:
    if hint is not None and peak <= hint:
        return hint
    # 12-bit data (common in OCT/fundus cameras) when no value exceeds 4095, else 16-bit, else the image's peak
    return 4095 if peak <= 4095 else 65535 if peak <= 65535 else peak


def _scale_to_unit(array: np.ndarray, hint: int | None = None, quiet_unit: bool = True) -> tuple[np.ndarray, list[str]]:
    """Non-uint8 data to float32 in [0, 1] by the decoder's rules; returns ``(values, notes)``."""
    if array.dtype == np.bool_:
        return array.astype(np.float32), []
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, []
    if np.issubdtype(array.dtype, np.integer):
        if array.size and int(array.min()) < 0:
            raise LoSamValueError("integer images with negative values are not supported")
        peak = int(array.max()) if array.size else 0
        depth = _integer_depth(peak, hint)
        kind = "16-bit image" if array.dtype.itemsize == 2 else f"{8 * array.dtype.itemsize}-bit integer image"
        how = {4095: "its bit depth (12-bit)", 65535: "its bit depth (16-bit)"}.get(depth, f"its maximum ({depth})")
        return array.astype(np.float32) / float(depth), [f"{kind} scaled by {how}"]
    if np.issubdtype(array.dtype, np.floating):
        return _scale_float(array, quiet_unit)
    raise LoSamValueError(f"unsupported image dtype {array.dtype}")


def _scale_float(array: np.ndarray, quiet_unit: bool) -> tuple[np.ndarray, list[str]]:
    values = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    bad = int(values.size - np.count_nonzero(finite))
    if bad:
        values = np.where(finite, values, 0.0)
    data = values[finite] if bad else values.ravel()
    if data.size == 0:
        return np.zeros(values.shape, np.float32), [f"{bad} non-finite pixel{'s' if bad != 1 else ''} set to 0"]
    offset, span, how = _float_range(data, float(data.min()), float(data.max()))
    scaled = values if (offset, span) == (0.0, 1.0) else (values - offset) / span
    out_of_range = (scaled < 0.0) | (scaled > 1.0)
    if bad:
        out_of_range &= finite
        scaled = np.where(finite, scaled, 0.0)
    outside = int(np.count_nonzero(out_of_range))
    scaled = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    notes = []
    if how != "read as [0, 1]" or not quiet_unit or outside:
        notes.append(f"floating-point image {how}")
    if outside:
        notes.append(f"{outside} outlier pixel{'s' if outside != 1 else ''} clipped")
    if bad:
        notes.append(f"{bad} non-finite pixel{'s' if bad != 1 else ''} set to 0")
    return scaled, notes


def _float_range(data: np.ndarray, low: float, high: float) -> tuple[float, float, str]:
    """``(offset, span, description)`` of the finite values: pixels become ``(v - offset) / span``."""
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0, "read as [0, 1]"
    if low >= 0.0 and high <= 255.0:
        return 0.0, 255.0, "read as [0, 255]"
    robust_low = float(np.quantile(data, _OUTLIER_QUANTILES[0], method="higher"))
    robust_high = float(np.quantile(data, _OUTLIER_QUANTILES[1], method="lower"))
    if robust_low > robust_high:
        robust_low, robust_high = low, high
    if robust_low >= 0.0 and robust_high <= 1.0:
        return 0.0, 1.0, "read as [0, 1]"
    if robust_low >= 0.0 and robust_high <= 255.0:
        return 0.0, 255.0, "read as [0, 255]"
    span = robust_high - robust_low
    return robust_low, span if span > 0 else 1.0, f"min-max scaled from [{robust_low:.6g}, {robust_high:.6g}]"


class LoSamImageProcessor(BaseImageProcessor):
    """Prepares images for ``SamForSemanticSegmentation`` and maps its logits back to each image's size."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 1024,
        mode: str = "sam",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise LoSamValueError(f"mode must be one of {MODES}, got {mode!r}")
        if int(image_size) <= 0:
            raise LoSamValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.mode = mode
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if mode == "sam" else (PAPER_MEAN, PAPER_STD)
        self.image_mean = [float(v) for v in (image_mean if image_mean is not None else default_mean)]
        self.image_std = [float(v) for v in (image_std if image_std is not None else default_std)]

    @classmethod
    def for_model(cls, model_or_config, mode: str = "sam") -> LoSamImageProcessor:
        config = getattr(model_or_config, "config", model_or_config)
        return cls(image_size=config.image_size, mode=mode)

    # -- geometry ----------------------------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the image content inside the ``image_size`` square."""
        if self.mode == "paper":
            return self.image_size, self.image_size
        scale = self.image_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    # -- preprocessing -----------------------------------------------------------------------------------------------
    def preprocess(self, images, segmentation_maps=None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """``pixel_values`` (B, 3, S, S), ``original_sizes`` and ``reshaped_input_sizes`` (B, 2); with
        ``segmentation_maps`` also ``labels`` (B, S, S) resized by nearest neighbour, padding set to 255 (ignored).

        ``images``: one image or a list: file paths, PIL images, arrays or tensors, each decoded by
        :func:`decode_image`."""
        if return_tensors not in (None, "pt"):
            raise LoSamValueError(f"LoSamImageProcessor returns torch tensors only (return_tensors='pt'), got {return_tensors!r}")
        images = _as_list(images)
        if not images:
            raise LoSamValueError("no images given")
        pixel_values, original_sizes, reshaped = [], [], []
        for image in images:
            tensor = decode_image(image)[0]
            height, width = tensor.shape[-2:]
            pixel_values.append(self._prepare_one(tensor))
            original_sizes.append((height, width))
            reshaped.append(self.resized_size(height, width))
        data = {
            "pixel_values": torch.stack(pixel_values),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.long),
            "reshaped_input_sizes": torch.tensor(reshaped, dtype=torch.long),
        }
        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps)
            if len(maps) != len(images):
                raise LoSamValueError(f"{len(images)} images but {len(maps)} segmentation maps")
            labels = []
            for index, (label, size) in enumerate(zip(maps, original_sizes)):
                label = torch.as_tensor(np.asarray(label)).long()
                if tuple(label.shape) != tuple(size):
                    raise LoSamValueError(
                        f"segmentation map {index} has size {tuple(label.shape)} but its image is {tuple(size)}"
                    )
                labels.append(self.prepare_labels(label))
            data["labels"] = torch.stack(labels)
        return BatchFeature(data=data)

    def _prepare_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.normalize_and_pad(self.resize(tensor))

    def resize(self, tensor: torch.Tensor) -> torch.Tensor:
        """A (3, H, W) float image resized to its content size inside the ``image_size`` square (antialiased
        bilinear); the geometry step of :meth:`preprocess`, shared with training."""
        height, width = tensor.shape[-2:]
        new_h, new_w = self.resized_size(height, width)
        if (new_h, new_w) != (height, width):
            tensor = F.interpolate(
                tensor[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )[0]
        return tensor

    def normalize_and_pad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Normalise (3, h, w) content-size pixels in [0, 1] with ``image_mean``/``image_std`` and zero-pad it at the
        bottom/right to the ``image_size`` square; the second step of :meth:`preprocess`, shared with training."""
        mean = torch.tensor(self.image_mean, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        std = torch.tensor(self.image_std, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        tensor = (tensor - mean) / std
        pad_h, pad_w = self.image_size - tensor.shape[-2], self.image_size - tensor.shape[-1]
        if pad_h or pad_w:
            tensor = F.pad(tensor, (0, pad_w, 0, pad_h), value=0.0)
        return tensor

    def prepare_labels(self, label: torch.Tensor) -> torch.Tensor:
        """A (H, W) class-id map in the model's input geometry (nearest neighbour; padding is 255)."""
        height, width = label.shape
        new_h, new_w = self.resized_size(height, width)
        if (new_h, new_w) != (height, width):
            label = F.interpolate(label[None, None].float(), size=(new_h, new_w), mode="nearest-exact")[0, 0].long()
        pad_h, pad_w = self.image_size - new_h, self.image_size - new_w
        if pad_h or pad_w:
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return label

    # -- post-processing ---------------------------------------------------------------------------------------------
    def post_process_probabilities(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Class probabilities (num_labels, h, w) per image, padding cropped away, resized to ``target_sizes``."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return [torch.softmax(item.float(), dim=0) for item in self._logits_per_image(logits, target_sizes)]

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Label maps (h, w) per image: padding cropped away, logits resized to each ``target_sizes`` entry."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return [class_map(item.float(), torch.long) for item in self._logits_per_image(logits, target_sizes)]

    def _logits_per_image(self, logits: torch.Tensor, target_sizes) -> list[torch.Tensor]:
        if logits.dim() != 4:
            raise LoSamValueError(f"logits must be (batch, num_labels, h, w), got {tuple(logits.shape)}")
        if target_sizes is None:
            return list(logits)
        target_sizes = [tuple(int(v) for v in size) for size in target_sizes]
        if len(target_sizes) != logits.shape[0]:
            raise LoSamValueError(f"{logits.shape[0]} logits but {len(target_sizes)} target sizes")
        scale_h = logits.shape[-2] / self.image_size
        scale_w = logits.shape[-1] / self.image_size
        results = []
        for item, (height, width) in zip(logits, target_sizes):
            content_h, content_w = self.resized_size(height, width)
            item = item[:, : max(1, round(content_h * scale_h)), : max(1, round(content_w * scale_w))]
            item = F.interpolate(item[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
            results.append(item)
        return results


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def class_map(scores: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``scores.argmax(0)`` of (C, H, W) class scores or probabilities (the first class on ties, as argmax), built class
    by class: on CPU some 25 times faster than ``argmax`` over the leading dimension (measured on 584x565 images).
    ``dtype``: of the map (default uint8 up to 256 classes, else int32)."""
    if dtype is None:
        dtype = torch.uint8 if scores.shape[0] <= 256 else torch.int32
    best = scores[0].clone()
    label_map = torch.zeros(scores.shape[1:], dtype=dtype, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        label_map[better] = c
        torch.maximum(best, scores[c], out=best)
    return label_map
