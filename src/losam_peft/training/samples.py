"""The training samples in the model's geometry, their augmentation and the endless, seeded order they are drawn in.

The image processor does the geometry: :meth:`~losam_peft.image_processing_losam.LoSamImageProcessor.resize` once per
sample, :meth:`~losam_peft.image_processing_losam.LoSamImageProcessor.normalize_and_pad` for every drawn batch (after
the augmentation, which acts on [0, 1] pixels), and ``prepare_labels`` for the masks. Between the two, the resized
content is kept as uint8: a quarter of float32's memory for training sets of hundreds of 1024-pixel images, and
exact wherever no resize happens (an 8-bit image already at its content size); elsewhere within half a grey level
of what the processor gives at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from ..data.samples import Sample
from ..errors import TrainingError
from ..image_processing_losam import LoSamImageProcessor, to_float_rgb

__all__ = ["PreparedSamples", "augment_pair", "check_label_values", "sample_stream"]


class PreparedSamples:
    """Samples resized once to the model's geometry: uint8 content pixels (3, h, w) and (S, S) uint8 class ids
    (255 outside the field of view and in the padding)."""

    def __init__(self, samples: Sequence[Sample], processor: LoSamImageProcessor, num_labels: int):
        check_label_values(samples, num_labels)
        self.processor = processor
        self.pixels: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for sample in samples:
            self.pixels.append(quantise(processor.resize(to_float_rgb(sample.image))))
            label = torch.from_numpy(sample.label.astype(np.int64))
            if sample.fov is not None:
                label = label.masked_fill(~torch.from_numpy(np.asarray(sample.fov, dtype=bool)), IGNORE_INDEX)
            self.labels.append(processor.prepare_labels(label).to(torch.uint8))

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, indices: Sequence[int], seeds: Sequence[int], augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values, labels)`` of the samples ``indices``, each augmented with its seed when ``augment``."""
        pixel_values, labels = [], []
        for index, seed in zip(indices, seeds):
            image = self.pixels[index].float() / 255
            label = self.labels[index].long()
            if augment:
                image, label = augment_pair(image, label, torch.Generator().manual_seed(int(seed)))
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


def augment_pair(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
    """Colour jitter (brightness, contrast, saturation ±20%) and horizontal/vertical flips of the image content.

    ``image`` is the (3, h, w) content in [0, 1], ``label`` the (S, S) padded label map; its padding (255) is cropped
    with the content so that flips act on the image, not on the pad."""
    height, width = image.shape[-2:]
    content = label[:height, :width]
    rand = torch.rand(5, generator=generator)
    brightness, contrast, saturation = 0.8 + 0.4 * rand[:3]
    image = image * brightness
    gray = image.mean(dim=0, keepdim=True)
    image = (image - gray.mean()) * contrast + gray.mean()
    gray = image.mean(dim=0, keepdim=True)
    image = ((image - gray) * saturation + gray).clamp(0, 1)
    if rand[3] < 0.5:
        image, content = image.flip(-1), content.flip(-1)
    if rand[4] < 0.5:
        image, content = image.flip(-2), content.flip(-2)
    label = label.clone()
    label[:height, :width] = content
    return image, label


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
