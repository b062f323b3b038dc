"""Pictures of label maps: the class palette, palette PNGs, overlays with a legend, error maps and image | ground
truth | prediction (| errors) panels.

Colours are safe for colour-blind readers: the classes take the Okabe-Ito palette (distinguishable with every common
colour-vision deficiency; beyond its seven colours, generated hues), and error maps show true positives white, false
positives orange, false negatives reddish purple and wrong classes yellow, each named in a legend.

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

__all__ = ["ERROR_COLOURS", "comparison_panel", "draw_legend", "error_counts", "error_map", "label_map_to_pil",
           "overlay", "palette"]  # fmt: skip

# Class ids 1..7: the Okabe-Ito palette (sky blue first: it stands out on the red-orange of a fundus; then orange,
# bluish green, yellow, blue, vermillion, reddish purple); id 0 (background) is black. More classes get generated hues.
_BASE_COLOURS = [
    (0, 0, 0),
    (86, 180, 233),
    (230, 159, 0),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]
#: error-map colours by kind (Okabe-Ito where a hue is needed)
ERROR_COLOURS = {
    "true positive": (255, 255, 255),
    "false positive": (230, 159, 0),
    "false negative": (204, 121, 167),
    "wrong class": (240, 228, 66),
    "true negative": (0, 0, 0),
    "outside the field of view": (90, 90, 90),
}

CAPTIONS = ("image", "ground truth", "prediction")
_LINE = 16  # height of one line of text
_GAP = 10  # space between panels


def palette(num_labels: int) -> np.ndarray:
    """``(num_labels, 3)`` uint8 RGB colours: background black, then the Okabe-Ito colours, then generated hues."""
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


def overlay(
    image, label_map: np.ndarray, alpha: float = 0.5, num_labels: int | None = None, legend=None
) -> Image.Image:
    """``image`` (8-bit RGB array or PIL image) with every non-background class drawn in its palette colour,
    blended with ``alpha``. ``legend``: class names by id (``id2label``); their colours are then named in a box in
    the image's lower left corner (the image keeps its size)."""
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
    picture = Image.fromarray((out + 0.5).clip(0, 255).astype(np.uint8), mode="RGB")
    if legend:
        entries = [(str(name), tuple(int(c) for c in colours[int(k)])) for k, name in sorted(
            ((int(k), v) for k, v in dict(legend).items()), key=lambda kv: kv[0]) if 0 < int(k) < len(colours)]
        draw_legend(picture, entries)
    return picture


def draw_legend(picture: Image.Image, entries, corner: str = "lower left") -> Image.Image:
    """Draw ``entries`` ((name, rgb) pairs) as colour swatches with their names in a white box in a corner of
    ``picture`` (in place; also returned). A picture too small to keep most of itself visible under the box (the box
    would take more than half its width or height) gets no legend."""
    if not entries:
        return picture
    draw = ImageDraw.Draw(picture)
    swatch, pad = 10, 3
    width = max(draw.textlength(name) for name, _ in entries) + swatch + 3 * pad
    height = len(entries) * (swatch + pad) + pad
    if width > picture.width / 2 or height > picture.height / 2:
        return picture
    left = pad if "left" in corner else max(0, picture.width - width - pad)
    top = max(0, picture.height - height - pad) if "lower" in corner else pad
    draw.rectangle([left, top, left + width, top + height], fill=(255, 255, 255), outline=(0, 0, 0))
    for row, (name, colour) in enumerate(entries):
        y = top + pad + row * (swatch + pad)
        draw.rectangle([left + pad, y, left + pad + swatch, y + swatch], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((left + 2 * pad + swatch, y - 1), name, fill=(0, 0, 0))
    return picture


def _error_kinds(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray | None) -> dict[str, np.ndarray]:
    prediction = np.asarray(prediction).astype(np.int64)
    truth = np.asarray(truth).astype(np.int64)
    if prediction.shape != truth.shape:
        raise LoSamValueError(f"the prediction is {prediction.shape} but the ground truth is {truth.shape}")
    evaluated = truth != 255 if fov is None else (np.asarray(fov, dtype=bool) & (truth != 255))
    kinds = {
        "true positive": evaluated & (truth > 0) & (prediction == truth),
        "false positive": evaluated & (truth == 0) & (prediction > 0),
        "false negative": evaluated & (truth > 0) & (prediction == 0),
        "wrong class": evaluated & (truth > 0) & (prediction > 0) & (prediction != truth),
        "true negative": evaluated & (truth == 0) & (prediction == 0),
        "outside the field of view": ~evaluated,
    }
    return kinds


def error_counts(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None) -> dict[str, int]:
    """Pixels of each kind of :data:`ERROR_COLOURS` (foreground = any class above 0; 255 in the truth = ignored)."""
    return {kind: int(mask.sum()) for kind, mask in _error_kinds(prediction, truth, fov).items()}


def error_map(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None, legend: bool = True):
    """An RGB picture of where the prediction is right and wrong: true positives white, false positives orange,
    false negatives reddish purple, wrong classes yellow, true negatives black, unevaluated pixels grey; with a
    legend (the kinds present, with their pixel counts) when ``legend``."""
    kinds = _error_kinds(prediction, truth, fov)
    picture = np.zeros((*np.asarray(truth).shape, 3), dtype=np.uint8)
    for kind, mask in kinds.items():
        picture[mask] = ERROR_COLOURS[kind]
    image = Image.fromarray(picture, mode="RGB")
    if legend:
        entries = [(f"{kind.replace('outside the field of view', 'not evaluated')} {int(mask.sum())}",
                    ERROR_COLOURS[kind]) for kind, mask in kinds.items()
                   if mask.any() and kind not in ("true negative",)]  # fmt: skip
        draw_legend(image, entries)
    return image


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
    errors: bool = False,
    id2label=None,
) -> Image.Image:
    """Three panels side by side, image | ground truth | prediction, each with its caption, under an optional title;
    a fourth, the error map (:func:`error_map`), when ``errors``.

    Args:
        image: the 8-bit RGB image (array or PIL image; decode others with ``to_rgb8`` first).
        ground_truth, prediction: (H, W) class-id maps; 255 (ignore) in the ground truth is drawn as background.
        fov: the field of view; the prediction outside it is not evaluated, so it is not drawn either.
        style: ``"overlay"`` draws the classes over the image (palette colours, ``alpha``); ``"mask"`` draws them on
            black (white for binary maps).
        captions: the three panel captions.
        min_side, max_side: panels are enlarged by a whole factor (sharp pixels) when the image's longest side is
            below ``min_side``, and reduced when it is above ``max_side``.
        errors: add the error map of the prediction against the ground truth (inside ``fov``).
        id2label: class names by id; the class colours are then named in a legend row under the panels (with the
            error colours, when ``errors``).
    Returns an RGB PIL image, white around the panels.
    """
    if style not in ("overlay", "mask"):
        raise LoSamValueError(f"style must be 'overlay' or 'mask', got {style!r}")
    rgb = _rgb8(image)
    height, width = rgb.shape[:2]
    raw_truth = np.asarray(ground_truth)
    truth = np.where(raw_truth == 255, 0, raw_truth).astype(np.int64)  # IGNORE_INDEX (this module: numpy/PIL only)
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
    captions = tuple(captions)
    if errors:
        panels.append(error_map(np.asarray(prediction), raw_truth, fov, legend=False))
        captions = (*captions, "errors")

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

    entries = []
    if id2label:
        colours = palette(max(int(num_labels), max(int(k) for k in dict(id2label)) + 1))
        entries += [(str(name), tuple(int(c) for c in colours[int(k)])) for k, name in sorted(
            ((int(k), v) for k, v in dict(id2label).items()), key=lambda kv: kv[0]) if int(k) > 0]
    if errors:
        counts = error_counts(np.asarray(prediction), raw_truth, fov)
        entries += [(kind, ERROR_COLOURS[kind]) for kind in ("true positive", "false positive", "false negative",
                                                             "wrong class") if counts[kind]]  # fmt: skip
    columns = len(panels)
    top = _LINE if title else 0
    legend_height = _LINE + 4 if entries else 0
    canvas = Image.new("RGB", (columns * width + (columns - 1) * _GAP, height + top + _LINE + 2 + legend_height),
                       "white")  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 2), title, fill="black")
    for column, (panel, caption) in enumerate(zip(panels, captions)):
        left = column * (width + _GAP)
        draw.text((left + 2, top + 3), caption, fill="black")
        canvas.paste(panel, (left, top + _LINE + 2))
    x, y = 2, top + _LINE + 2 + height + 4
    for name, colour in entries:  # one legend row: swatch, name, swatch, name ...
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + 14, y - 1), name, fill="black")
        x += 14 + int(draw.textlength(name)) + 12
    return canvas
