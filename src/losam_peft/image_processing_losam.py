"""``LoSamImageProcessor``: images of any kind in, ``pixel_values`` out, and label maps back at the original size.

Two geometries:
- ``mode="sam"`` (default): the longest side is resized to ``image_size``, the image is normalised with SAM's own
  ImageNet mean/std and zero-padded at the bottom/right to a square, as SAM was pretrained. The aspect ratio is kept.
- ``mode="paper"``: the reference implementation's input: a plain resize to a square and mean/std 0.5.

Inputs may be PIL images (L, RGB, RGBA, P, CMYK, 1, I;16, I, F), numpy arrays (H×W, H×W×1/3/4; uint8, uint16,
bool or float) or torch tensors (C×H×W). Grayscale is replicated to three channels, alpha is dropped, 16-bit data
is scaled by its bit depth (12-bit when no value exceeds 4095, else 16-bit), floats are taken as [0, 1] (or [0, 255]
when larger values occur).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .errors import LoSamValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_MEAN = (0.5, 0.5, 0.5)
PAPER_STD = (0.5, 0.5, 0.5)
MODES = ("sam", "paper")
IGNORE_INDEX = 255


def to_float_rgb(image) -> torch.Tensor:
    """A (3, H, W) float32 tensor in [0, 1] from a PIL image, numpy array or tensor."""
    if isinstance(image, Image.Image):
        if image.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" else "RGB")
        array = np.asarray(image)
        if image.mode == "F":
            array = array.astype(np.float32)
        return to_float_rgb(array)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
            raise LoSamValueError(f"image tensors must be (C, H, W) with 1, 3 or 4 channels, got {tuple(tensor.shape)}")
        return to_float_rgb(tensor.permute(1, 2, 0).numpy())
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first numpy
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop alpha
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise LoSamValueError(f"cannot read an image of shape {array.shape}; expected H×W or H×W×(1|3|4)")
    if array.size == 0:
        raise LoSamValueError("empty image")
    values = _scale_to_unit(array)
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if tensor.dim() == 2:
        tensor = tensor[None].expand(3, -1, -1)
    else:
        tensor = tensor.permute(2, 0, 1)
    return tensor.contiguous()


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        peak = int(array.max()) if array.size else 0
        if peak < 0 or int(array.min()) < 0:
            raise LoSamValueError("integer images with negative values are not supported")
        # 12-bit data (common in OCT/fundus cameras) when no value exceeds 4095, else 16-bit, else the image's peak
        depth = 4095 if peak <= 4095 else 65535 if peak <= 65535 else peak
        return array.astype(np.float32) / float(depth)
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float32))
        if values.max(initial=0.0) > 1.0:
            values = values / 255.0
        return np.clip(values, 0.0, 1.0)
    raise LoSamValueError(f"unsupported image dtype {array.dtype}")


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
        ``segmentation_maps`` also ``labels`` (B, S, S) resized by nearest neighbour, padding set to 255 (ignored)."""
        if return_tensors not in (None, "pt"):
            raise LoSamValueError(f"LoSamImageProcessor returns torch tensors only (return_tensors='pt'), got {return_tensors!r}")
        images = _as_list(images)
        if not images:
            raise LoSamValueError("no images given")
        pixel_values, original_sizes, reshaped = [], [], []
        for image in images:
            tensor = to_float_rgb(image)
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
        return [item.argmax(dim=0) for item in self._logits_per_image(logits, target_sizes)]

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
