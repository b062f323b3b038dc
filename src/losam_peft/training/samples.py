"""The training samples in the model's geometry, their augmentation and the endless, seeded order they are drawn in.

The image processor does the geometry: :meth:`~losam_peft.image_processing_losam.LoSamImageProcessor.resize` once per
sample, :meth:`~losam_peft.image_processing_losam.LoSamImageProcessor.normalize_and_pad` for every drawn batch (after
the augmentation, which acts on [0, 1] pixels), and ``prepare_labels`` for the masks. Between the two, the resized
content is kept as uint8: a quarter of float32's memory for training sets of hundreds of 1024-pixel images, and
exact wherever no resize happens (an 8-bit image already at its content size); elsewhere within half a grey level
of what the processor gives at inference.

The uint8 content is moved to the training device once (``device=``); every draw is augmented there, so a GPU is not
fed by per-step CPU work. The random numbers of a draw come from a CPU generator seeded by the draw alone, so a run
gives the same augmentation on every device and after every resume.

Two colour jitters (``jitter=``):

- ``"bcs"``: brightness, contrast and saturation factors U(0.8, 1.2) applied to every draw in that order, with the
  channel mean as grey (the package's default recipe);
- ``"reference"``: the authors' recipe (albumentations' ``ColorJitter`` with its defaults): brightness, contrast,
  saturation factors U(0.8, 1.2) and a hue shift U(-0.2, 0.2) of the hue circle, the four in a random order, each
  result clipped to [0, 1], luma grey (0.299 R + 0.587 G + 0.114 B) for contrast and saturation, and the whole jitter
  applied with probability 0.5.

Both then flip vertically and horizontally, each with probability 0.5. The reference jitters and flips before its
resize; here the resize comes first (once per sample). Brightness, saturation and flips commute with a bilinear
resize up to the clipping; contrast's mean and the hue shift differ from the reference's by the resampling only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from ..data.samples import Sample
from ..errors import TrainingError
from ..image_processing_losam import LoSamImageProcessor, to_float_rgb

__all__ = [
    "JITTERS",
    "Augmentation",
    "PreparedSamples",
    "apply_augmentation",
    "augment_pair",
    "check_label_values",
    "draw_augmentation",
    "sample_stream",
    "shift_hue",
]

#: the colour jitters :func:`draw_augmentation` knows (see the module docstring)
JITTERS = ("bcs", "reference")
#: luma weights of R, G, B (ITU-R BT.601), the grey of the reference's contrast and saturation
LUMA = (0.299, 0.587, 0.114)
_ORDERS = list(itertools.permutations(("brightness", "contrast", "saturation", "hue")))


class PreparedSamples:
    """Samples resized once to the model's geometry: uint8 content pixels (3, h, w) and (S, S) uint8 class ids
    (255 in the padding, and outside the field of view unless ``ignore_outside_fov`` is False), on ``device``."""

    def __init__(
        self,
        samples: Sequence[Sample],
        processor: LoSamImageProcessor,
        num_labels: int,
        *,
        ignore_outside_fov: bool = True,
        device: torch.device | str | None = None,
        jitter: str = "bcs",
    ):
        if jitter not in JITTERS:
            raise TrainingError(f"jitter must be one of {', '.join(JITTERS)}, not {jitter!r}")
        check_label_values(samples, num_labels)
        self.processor = processor
        self.jitter = jitter
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pixels: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for sample in samples:
            pixels = quantise(processor.resize(to_float_rgb(sample.image)))
            label = torch.from_numpy(sample.label.astype(np.int64))
            if ignore_outside_fov and sample.fov is not None:
                label = label.masked_fill(~torch.from_numpy(np.asarray(sample.fov, dtype=bool)), IGNORE_INDEX)
            label = processor.prepare_labels(label).to(torch.uint8)
            self.pixels.append(pixels.to(self.device))
            self.labels.append(label.to(self.device))

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, indices: Sequence[int], seeds: Sequence[int], augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values, labels)`` of the samples ``indices`` on the samples' device, each augmented with its seed
        when ``augment``."""
        pixel_values, labels = [], []
        for index, seed in zip(indices, seeds):
            image = self.pixels[index].float() / 255
            label = self.labels[index].long()
            if augment:
                params = draw_augmentation(torch.Generator().manual_seed(int(seed)), self.jitter)
                image, label = apply_augmentation(image, label, params)
            pixel_values.append(self.processor.normalize_and_pad(image))
            labels.append(label)
        return torch.stack(pixel_values), torch.stack(labels)


def quantise(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] float pixels as uint8 (``round(255 * v)``); ``uint8 / 255`` gives them back."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def check_label_values(samples: Sequence[Sample], num_labels: int) -> None:
    """Every mask value must be a class id below ``num_labels`` or 255 (ignore)."""
    for sample in samples:
        values = np.unique(sample.label)
        bad = [int(v) for v in values if v != IGNORE_INDEX and not 0 <= v < num_labels]
        if bad:
            raise TrainingError(
                f"sample {sample.id!r}: mask values {bad[:5]} are outside the label set 0..{num_labels - 1} "
                "(255 = ignore); pass --labels/--num-labels that cover them"
            )


# -- augmentation ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """One draw's augmentation: the colour operations in the order applied (name, factor), and the flips."""

    colour: tuple[tuple[str, float], ...]
    grey: str  # "mean" (the bcs jitter) or "luma" (the reference's)
    flip_vertical: bool
    flip_horizontal: bool


def draw_augmentation(generator: torch.Generator, jitter: str = "bcs") -> Augmentation:
    """The random choices of one draw, from ``generator`` (a CPU generator)."""
    if jitter == "bcs":
        # five numbers, in the order the package has always drawn them: a seed gives the same draw as before
        rand = torch.rand(5, generator=generator).tolist()
        brightness, contrast, saturation = (0.8 + 0.4 * r for r in rand[:3])
        colour = (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))
        return Augmentation(colour, "mean", flip_vertical=rand[4] < 0.5, flip_horizontal=rand[3] < 0.5)
    if jitter != "reference":
        raise TrainingError(f"jitter must be one of {', '.join(JITTERS)}, not {jitter!r}")
    rand = torch.rand(8, generator=generator).tolist()
    colour = ()
    if rand[0] < 0.5:  # albumentations' p=0.5 for the whole ColorJitter
        order = _ORDERS[min(int(rand[1] * len(_ORDERS)), len(_ORDERS) - 1)]
        factors = {
            "brightness": 0.8 + 0.4 * rand[2],
            "contrast": 0.8 + 0.4 * rand[3],
            "saturation": 0.8 + 0.4 * rand[4],
            "hue": -0.2 + 0.4 * rand[5],
        }
        colour = tuple((name, factors[name]) for name in order)
    return Augmentation(colour, "luma", flip_vertical=rand[6] < 0.5, flip_horizontal=rand[7] < 0.5)


def apply_augmentation(image: torch.Tensor, label: torch.Tensor, params: Augmentation):
    """Apply one draw to ``image``, the (3, h, w) content in [0, 1], and ``label``, the (S, S) padded label map, on
    their device. The label's padding (255) is cropped with the content, so that flips act on the image, not the pad."""
    height, width = image.shape[-2:]
    for name, factor in params.colour:
        image = _COLOUR_OPS[name](image, factor, params.grey)
    content = label[:height, :width]
    if params.flip_horizontal:
        image, content = image.flip(-1), content.flip(-1)
    if params.flip_vertical:
        image, content = image.flip(-2), content.flip(-2)
    if params.flip_horizontal or params.flip_vertical:
        label = label.clone()
        label[:height, :width] = content
    return image, label


def augment_pair(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator, jitter: str = "bcs"):
    """Draw an augmentation from ``generator`` and apply it (:func:`draw_augmentation`, :func:`apply_augmentation`)."""
    return apply_augmentation(image, label, draw_augmentation(generator, jitter))


def _grey(image: torch.Tensor, grey: str) -> torch.Tensor:
    if grey == "luma":
        weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device)[:, None, None]
        return (image * weights).sum(dim=0, keepdim=True)
    return image.mean(dim=0, keepdim=True)


def _brightness(image, factor, grey):
    image = image * factor
    # the bcs jitter clips once, at the end (as it always has); the reference clips after every operation
    return image.clamp(0, 1) if grey == "luma" else image


def _contrast(image, factor, grey):
    mean = _grey(image, grey).mean()
    image = (image - mean) * factor + mean
    return image.clamp(0, 1) if grey == "luma" else image


def _saturation(image, factor, grey):
    gray = _grey(image, grey)
    return ((image - gray) * factor + gray).clamp(0, 1)


def _hue(image, factor, grey):
    return shift_hue(image, factor)


_COLOUR_OPS = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}


def shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of (3, h, w) RGB pixels in [0, 1] by ``shift`` of the hue circle (HSV; value and saturation
    kept), on the pixels' device."""
    r, g, b = image.unbind(0)
    maxc = image.amax(dim=0)
    minc = image.amin(dim=0)
    delta = maxc - minc
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    hue = (hue + shift) % 1.0
    sector_float = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector_float
    sector = sector_float.long() % 6
    value = maxc
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    choices = {
        0: (value, t, p), 1: (q, value, p), 2: (p, value, t), 3: (p, q, value), 4: (t, p, value), 5: (value, p, q),
    }  # fmt: skip
    out = torch.empty_like(image)
    for channel in range(3):
        stacked = torch.stack([choices[s][channel] for s in range(6)])
        out[channel] = stacked.gather(0, sector[None]).squeeze(0)
    return out.clamp(0, 1)


def sample_stream(num_samples: int, seed: int, start: int, count: int) -> tuple[list[int], list[int]]:
    """Positions ``start .. start+count`` of the endless sample order: epoch ``e`` is a permutation seeded by
    ``(seed, e)``. Returns the sample indices and a per-draw augmentation seed."""
    indices, seeds = [], []
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_samples)
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        indices.append(int(order[offset]))
        seeds.append(seed * 7_919 + position * 104_729 + 1)
    return indices, seeds
