"""Pictures of label maps: the class palette, palette PNGs, overlays and image | ground truth | prediction panels.

numpy and PIL only. Everything here takes images that are already decoded to 8-bit RGB (an H×W×3 uint8 array or an
8-bit PIL image); decode other images first with ``losam_peft.image_processing_losam.to_rgb8``, so that 16-bit,
float and CMYK images are drawn as the model sees them.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from .errors import LoSamValueError

__all__ = ["comparison_panel", "label_map_to_pil", "overlay", "palette"]

# Clearly separated colours for class ids 1..; id 0 (background) is black. More classes get generated hues.
_BASE_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]

CAPTIONS = ("image", "ground truth", "prediction")
_LINE = 16  # height of one line of text
_GAP = 10  # space between panels


def palette(num_labels: int) -> np.ndarray:
    """``(num_labels, 3)`` uint8 RGB colours: background black, then well separated colours."""
    colours = list(_BASE_COLOURS[:num_labels])
    for i in range(num_labels - len(colours)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def label_map_to_pil(label_map: np.ndarray, num_labels: int | None = None) -> Image.Image:
    """A palette ("P") PNG-ready image whose pixel values are the class ids."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise LoSamValueError(f"label maps must be (H, W), got shape {label_map.shape}")
    if label_map.size and int(label_map.max()) > 255:
        raise LoSamValueError("label maps with class ids above 255 cannot be stored as palette PNGs")
    n = max(int(num_labels or 0), int(label_map.max()) + 1 if label_map.size else 1)
    image = Image.fromarray(np.ascontiguousarray(label_map.astype(np.uint8)), mode="P")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:n] = palette(n)
    image.putpalette(colours.reshape(-1).tolist())
    return image


def _rgb8(image) -> np.ndarray:
    """An H×W×3 uint8 array of an 8-bit RGB (or grey) array or 8-bit PIL image; anything else is refused."""
    if isinstance(image, Image.Image):
        if image.mode not in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX"):
            raise LoSamValueError(
                f"cannot draw on a PIL image of mode {image.mode}; decode it first with "
                "losam_peft.image_processing_losam.to_rgb8"
            )
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise LoSamValueError(
            f"overlays are drawn on 8-bit RGB images (H×W×3 uint8), got {array.dtype} of shape {array.shape}; decode "
            "the image first with losam_peft.image_processing_losam.to_rgb8"
        )
    return array


def _colours_for(label_map: np.ndarray, num_labels: int | None) -> np.ndarray:
    n = max(int(num_labels or 0), int(label_map.max()) + 1 if label_map.size else 1)
    return palette(n)


def overlay(image, label_map: np.ndarray, alpha: float = 0.5, num_labels: int | None = None) -> Image.Image:
    """``image`` (8-bit RGB array or PIL image) with every non-background class drawn in its palette colour,
    blended with ``alpha``."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise LoSamValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = _rgb8(image)
    label_map = np.asarray(label_map)
    if label_map.shape != rgb.shape[:2]:
        raise LoSamValueError(
            f"the label map is {label_map.shape[0]}x{label_map.shape[1]} (HxW) but the image is "
            f"{rgb.shape[0]}x{rgb.shape[1]}; pass the label map predicted for this image"
        )
    colours = _colours_for(label_map, num_labels).astype(np.float32)
    out = rgb.astype(np.float32)
    foreground = label_map > 0
    if foreground.any():
        out[foreground] = (1.0 - alpha) * out[foreground] + alpha * colours[label_map[foreground]]
    return Image.fromarray((out + 0.5).clip(0, 255).astype(np.uint8), mode="RGB")


def _mask_picture(label_map: np.ndarray, num_labels: int | None) -> Image.Image:
    """Classes on black: white for a binary map, palette colours for more classes."""
    if label_map.size == 0 or (int(label_map.max()) <= 1 and int(num_labels or 2) <= 2):
        return Image.fromarray((label_map > 0).astype(np.uint8) * np.uint8(255)).convert("RGB")
    return Image.fromarray(_colours_for(label_map, num_labels)[label_map], mode="RGB")


def comparison_panel(
    image,
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    *,
    title: str | None = None,
    num_labels: int | None = None,
    fov: np.ndarray | None = None,
    style: str = "overlay",
    alpha: float = 0.6,
    captions: tuple[str, str, str] = CAPTIONS,
    min_side: int | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Three panels side by side, image | ground truth | prediction, each with its caption, under an optional title.

    Args:
        image: the 8-bit RGB image (array or PIL image; decode others with ``to_rgb8`` first).
        ground_truth, prediction: (H, W) class-id maps; 255 (ignore) in the ground truth is drawn as background.
        fov: the field of view; the prediction outside it is not evaluated, so it is not drawn either.
        style: ``"overlay"`` draws the classes over the image (palette colours, ``alpha``); ``"mask"`` draws them on
            black (white for binary maps).
        captions: the three panel captions.
        min_side, max_side: panels are enlarged by a whole factor (sharp pixels) when the image's longest side is
            below ``min_side``, and reduced when it is above ``max_side``.
    Returns an RGB PIL image, white around the panels.
    """
    if style not in ("overlay", "mask"):
        raise LoSamValueError(f"style must be 'overlay' or 'mask', got {style!r}")
    rgb = _rgb8(image)
    height, width = rgb.shape[:2]
    truth = np.asarray(ground_truth)
    truth = np.where(truth == 255, 0, truth).astype(np.int64)  # constants.IGNORE_INDEX (this module: numpy/PIL only)
    predicted = np.asarray(prediction).astype(np.int64)
    for name, array in (("ground truth", truth), ("prediction", predicted)):
        if array.shape != (height, width):
            raise LoSamValueError(f"the {name} is {array.shape} but the image is {(height, width)}")
    if fov is not None:
        predicted = np.where(np.asarray(fov, dtype=bool), predicted, 0)
    if num_labels is None:
        num_labels = int(max(truth.max(initial=0), predicted.max(initial=0))) + 1
    if style == "overlay":
        pictures = [overlay(rgb, labels, alpha=alpha, num_labels=num_labels) for labels in (truth, predicted)]
    else:
        pictures = [_mask_picture(labels, num_labels) for labels in (truth, predicted)]
    panels = [Image.fromarray(rgb), *pictures]

    scale = 1.0
    if min_side and max(height, width) < min_side:
        scale = float(math.ceil(min_side / max(height, width)))
    elif max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
        panels = [panel.resize(size, resample) for panel in panels]
    width, height = size

    top = _LINE if title else 0
    canvas = Image.new("RGB", (3 * width + 2 * _GAP, height + top + _LINE + 2), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 2), title, fill="black")
    for column, (panel, caption) in enumerate(zip(panels, captions)):
        left = column * (width + _GAP)
        draw.text((left + 2, top + 3), caption, fill="black")
        canvas.paste(panel, (left, top + _LINE + 2))
    return canvas
