"""Sliding-window (tiled) inference at native resolution, as pure functions over a forward callable.

The image is cut into overlapping ``tile``×``tile`` windows (``overlap`` is the fraction shared by neighbours; the
last window of a row or column is flush with the image's border), each window goes through the model on its own,
and the class probabilities of overlapping windows are blended with linear-ramp weights (rising from a window's
border to 1 over the overlap width), so seams disappear. When to use it, and what it costs, is measured in
:mod:`losam_peft.predict`.

Nothing here knows the model: :func:`tiled_probabilities` takes a callable that maps a list of (3, tile, tile)
float images in [0, 1] to their class probabilities, ``LoSamPipeline.forward_probabilities`` for instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LoSamValueError
from .image_processing_losam import to_float_rgb

__all__ = ["blend_weights", "count_tiles", "tile_starts", "tiled_probabilities"]

ForwardProbabilities = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``length``: every ``stride``, the last window flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_weights(tile: int, overlap_px: int) -> torch.Tensor:
    """1-D linear-ramp weights of a window: rising from the border to 1 over ``overlap_px`` pixels (never 0)."""
    position = torch.arange(tile, dtype=torch.float32) + 0.5
    distance = torch.minimum(position, tile - position)
    return (distance / max(1, overlap_px)).clamp(1e-3, 1.0)


def _check_tile(tile, overlap) -> tuple[int, int, int]:
    """``(tile, stride, overlap_px)`` of valid options; a :class:`LoSamValueError` otherwise."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise LoSamValueError(f"tile must be an integer of at least 16 pixels, got {tile!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise LoSamValueError(f"overlap must be in [0, 1), got {overlap!r}")
    tile = int(tile)
    stride = max(1, int(round(tile * (1.0 - float(overlap)))))
    return tile, stride, tile - stride


def count_tiles(height: int, width: int, tile: int, overlap: float = 0.25) -> int:
    """Number of windows :func:`tiled_probabilities` runs for an image of this size."""
    tile, stride, _ = _check_tile(tile, overlap)
    return len(tile_starts(height, tile, stride)) * len(tile_starts(width, tile, stride))


def _as_forward(forward_probabilities) -> ForwardProbabilities:
    # an object with a ``forward_probabilities`` method (a LoSamPipeline) is accepted for the old signature
    method = getattr(forward_probabilities, "forward_probabilities", None)
    if callable(method):
        return method
    if not callable(forward_probabilities):
        raise LoSamValueError(
            "forward_probabilities must be a callable mapping a list of images to their class probabilities "
            f"(e.g. LoSamPipeline.forward_probabilities), got {type(forward_probabilities).__name__}"
        )
    return forward_probabilities


def tiled_probabilities(
    forward_probabilities: ForwardProbabilities, image, tile: int, overlap: float = 0.25, batch_size: int = 1
) -> tuple[torch.Tensor, int]:
    """Sliding-window class probabilities ``(num_labels, H, W)`` of one image at native resolution.

    Args:
        forward_probabilities: maps a list of (3, tile, tile) float images in [0, 1] to one ``(num_labels, tile,
            tile)`` probability tensor each (e.g. ``pipeline.forward_probabilities``; a pipeline itself is accepted).
        image: anything the image processor decodes (path, PIL image, array, tensor).
        tile, overlap: window size in pixels (at least 16) and the fraction neighbours share, in [0, 1).
        batch_size: windows per call of ``forward_probabilities``.

    Windows are ``tile``×``tile`` pixels of the original image (an image smaller than a window is padded with black
    to it, so every window has the same scale), and the probabilities of overlapping windows are blended with
    linear-ramp weights. Returns ``(probabilities, number_of_windows)``.
    """
    forward = _as_forward(forward_probabilities)
    tile, stride, overlap_px = _check_tile(tile, overlap)
    step = max(1, int(batch_size))
    pixels = to_float_rgb(image)
    _, height, width = pixels.shape
    ys, xs = tile_starts(height, tile, stride), tile_starts(width, tile, stride)
    ramp = blend_weights(tile, overlap_px)
    window = ramp[:, None] * ramp[None, :]
    total = None
    weight_sum = torch.zeros((height, width), dtype=torch.float32)
    boxes = [(y, x, min(tile, height - y), min(tile, width - x)) for y in ys for x in xs]
    for start in range(0, len(boxes), step):
        chunk = boxes[start : start + step]
        crops = []
        for y, x, h, w in chunk:
            crop = pixels[:, y : y + h, x : x + w]
            if h < tile or w < tile:
                crop = F.pad(crop, (0, tile - w, 0, tile - h), value=0.0)
            crops.append(crop)
        probs = list(forward(crops))
        if len(probs) != len(crops):
            raise LoSamValueError(f"forward_probabilities returned {len(probs)} results for {len(crops)} windows")
        for (y, x, h, w), p in zip(chunk, probs):
            p = torch.as_tensor(p, dtype=torch.float32).cpu()
            if total is None:
                total = torch.zeros((p.shape[0], height, width), dtype=torch.float32)
            wgt = window[:h, :w]
            total[:, y : y + h, x : x + w] += p[:, :h, :w] * wgt
            weight_sum[y : y + h, x : x + w] += wgt
    return total / weight_sum, len(boxes)
