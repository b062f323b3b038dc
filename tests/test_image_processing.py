"""LoSamImageProcessor: input kinds, the two geometries, post-processing back to the original size (issue 2)."""

import numpy as np
import pytest
import torch
from PIL import Image

from losam_peft import LoSamImageProcessor
from losam_peft.image_processing_losam import IMAGENET_MEAN, IMAGENET_STD, to_float_rgb


def test_input_kinds_become_rgb_unit_range():
    gray = np.full((6, 8), 128, np.uint8)
    assert to_float_rgb(gray).shape == (3, 6, 8)
    torch.testing.assert_close(to_float_rgb(gray)[:, 0, 0], torch.full((3,), 128 / 255))
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    out = to_float_rgb(Image.fromarray(rgba, "RGBA"))
    assert out.shape == (3, 6, 8) and out[0].min() == 1 and out[1:].max() == 0
    sixteen = np.full((6, 8), 65535, np.uint16)
    assert to_float_rgb(sixteen).max() == 1
    twelve = np.full((6, 8), 4095, np.uint16)
    assert to_float_rgb(twelve).max() == 1  # 12-bit data fills the range
    pil16 = Image.fromarray(np.full((6, 8), 32768, np.uint16))
    assert abs(float(to_float_rgb(pil16).max()) - 32768 / 65535) < 1e-6
    cmyk = Image.new("CMYK", (8, 6), (0, 0, 0, 0))
    assert to_float_rgb(cmyk).shape == (3, 6, 8)
    assert to_float_rgb(Image.new("1", (8, 6), 1)).max() == 1
    assert to_float_rgb(torch.rand(3, 6, 8)).shape == (3, 6, 8)
    with pytest.raises(ValueError, match="cannot read an image of shape"):
        to_float_rgb(np.zeros((6, 8, 5)))


def test_sam_mode_keeps_aspect_pads_and_normalises():
    processor = LoSamImageProcessor(image_size=64)
    image = np.full((32, 16, 3), 255, np.uint8)
    batch = processor(image)
    pixels = batch["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    assert batch["original_sizes"].tolist() == [[32, 16]]
    assert batch["reshaped_input_sizes"].tolist() == [[64, 32]]
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pixels[0, :, 10, 10], expected)
    assert torch.all(pixels[0, :, :, 32:] == 0)  # padding on the right


def test_paper_mode_stretches_with_half_mean_std():
    processor = LoSamImageProcessor(image_size=64, mode="paper")
    batch = processor(np.zeros((32, 16), np.uint8))
    assert batch["reshaped_input_sizes"].tolist() == [[64, 64]]
    assert torch.all(batch["pixel_values"] == -1)
    with pytest.raises(ValueError, match="mode must be one of"):
        LoSamImageProcessor(mode="other")


@pytest.mark.parametrize("mode", ["sam", "paper"])
def test_labels_and_post_processing_round_trip(mode):
    processor = LoSamImageProcessor(image_size=64, mode=mode)
    label = np.zeros((32, 16), np.int64)
    label[8:24, 4:12] = 1
    batch = processor(np.zeros((32, 16, 3), np.uint8), segmentation_maps=[label])
    labels = batch["labels"]
    assert labels.shape == (1, 64, 64)
    if mode == "sam":
        assert torch.all(labels[0, :, 32:] == 255)
    one_hot = torch.nn.functional.one_hot(labels.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 10
    maps = processor.post_process_semantic_segmentation(one_hot, target_sizes=[(32, 16)])
    assert maps[0].shape == (32, 16)
    assert torch.equal(maps[0], torch.from_numpy(label))
    probs = processor.post_process_probabilities(one_hot, target_sizes=[(32, 16)])
    assert probs[0].shape == (2, 32, 16)
    torch.testing.assert_close(probs[0].sum(0), torch.ones(32, 16))


def test_mismatched_segmentation_map_is_refused():
    processor = LoSamImageProcessor(image_size=64)
    with pytest.raises(ValueError, match=r"segmentation map 0 has size \(10, 10\) but its image is \(32, 16\)"):
        processor(np.zeros((32, 16), np.uint8), segmentation_maps=[np.zeros((10, 10))])


def test_processor_saves_and_loads_with_auto_class(tmp_path):
    from transformers import AutoImageProcessor

    processor = LoSamImageProcessor(image_size=96, mode="paper")
    processor.save_pretrained(tmp_path)
    again = LoSamImageProcessor.from_pretrained(tmp_path)
    assert (again.image_size, again.mode, again.image_mean) == (96, "paper", [0.5, 0.5, 0.5])
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(auto, LoSamImageProcessor) and auto.image_size == 96


def test_class_map_equals_argmax_with_its_ties():
    import torch

    from losam_peft.image_processing_losam import class_map

    scores = torch.randn(5, 33, 29, generator=torch.Generator().manual_seed(0))
    scores[2, :4] = scores[4, :4] = scores.max() + 1  # ties: the first class wins, as with argmax
    assert torch.equal(class_map(scores, torch.long), scores.argmax(0))
    assert class_map(scores).dtype == torch.uint8
    assert class_map(torch.zeros(300, 2, 2)).dtype == torch.int32
