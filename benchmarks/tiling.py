"""Tiled against whole-image inference: the measurement behind ``losam predict``'s default.

    python benchmarks/tiling.py

The default (whole-image resize) was chosen by measurement: this script
(``python -m losam_peft.predict``; CPU, 2 shared cores of an Intel Xeon, float32). A tiny model (hidden 32, 2 blocks,
input 128, standing in for SAM at 1024) was trained for 300 steps on four synthetic fundus images of 256² (twice the
input, as FIVES 2048² is for SAM), once the paper's way on whole images resized to the input and once on native
128² crops, then run on synthetic images of 256², 512² and 1024² (the generator's vessels scale with the image, like
a higher-resolution camera's). Vessel Dice against the generator's mask, seeds 0 / 1:

=====================  =========  =====================  =====================  =====================
trained on             mode       256² (windows)         512² (windows)         1024² (windows)
=====================  =========  =====================  =====================  =====================
whole images (paper)   whole      0.250 / 0.235 (1)      0.243 / 0.236 (1)      0.208 / 0.250 (1)
whole images (paper)   tile 128   0.260 / 0.229 (9)      0.154 / 0.249 (25)     0.185 / 0.257 (121)
whole images (paper)   tile 256   0.250 / 0.235 (1)      0.171 / 0.287 (9)      0.217 / 0.310 (25)
native 128² crops      whole      0.456 / 0.427 (1)      0.426 / 0.493 (1)      0.409 / 0.472 (1)
native 128² crops      tile 128   0.599 / 0.667 (9)      0.729 / 0.772 (25)     0.831 / 0.889 (121)
native 128² crops      tile 256   0.456 / 0.427 (1)      0.581 / 0.643 (9)      0.739 / 0.821 (25)
=====================  =========  =====================  =====================  =====================

Rule: match the inference geometry to the training geometry. For adapters trained the paper's way (whole images
resized to ``image_size``, this package's recipe) tiling gave no consistent gain (seed 0 lost up to 0.09 Dice, seed
1 gained up to 0.06) while costing one forward pass per window, so the default is the whole-image resize. For
adapters trained on native-resolution crops, tiling with ``tile`` = the training crop size is clearly better
(+0.14 to +0.42 Dice here) and should be used. Cost with SAM (``tile=1024``, ``overlap=0.25``): FIVES 2048² 3×3 = 9
windows, HRF 3504×2336 5×3 = 15, IDRiD 4288×2848 6×4 = 24, against one forward pass for the whole image.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def benchmark_tiling(steps: int = 300, seed: int = 0, train_size: int = 256, test_sizes=(256, 512, 1024)) -> dict:
    """Re-run the measurement that chose the whole-image default (``python benchmarks/tiling.py``).

    A tiny model (hidden 32, 2 blocks, ``image_size`` 128) stands in for SAM at 1024: synthetic fundus images
    (``losam_peft.data.synthetic.fundus``, whose vessel widths scale with the image size like a higher-resolution
    camera's) of ``train_size`` pixels play a FIVES-like dataset at twice the model's input. Two models are trained
    (all weights, AdamW, class-weighted cross-entropy): one the paper's way on whole images resized to the input,
    one on native-resolution 128² crops. Each is scored on larger synthetic images with the whole-image resize and
    with tiles of 128 px (native resolution, like ``tile=1024`` for SAM) and of ``train_size`` px (the training
    scale of the whole-image model): vessel Dice against the generator's mask, windows and seconds per image.
    """
    from transformers import SamVisionConfig

    from losam_peft.data.synthetic import fundus
    from losam_peft.image_processing_losam import LoSamImageProcessor
    from losam_peft.modeling_losam import SamForSemanticSegmentation
    from losam_peft.pipeline import LoSamPipeline

    size = 128
    config = SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, global_attn_indexes=[1],
        image_size=size, patch_size=8, window_size=4, output_channels=32, num_pos_feats=16,
        initializer_range=0.02, num_labels=2,
    )  # fmt: skip
    processor = LoSamImageProcessor(image_size=size)
    rng = np.random.default_rng(seed)
    train_set = [fundus(size=train_size, seed=seed + i) for i in range(4)]
    class_weight = torch.tensor([1.0, 4.0])

    def batch_whole():
        picks = [train_set[int(i)] for i in rng.integers(0, len(train_set), 4)]
        return [s.image for s in picks], [s.mask for s in picks]

    def batch_crops():
        images, masks = [], []
        for _ in range(4):
            sample = train_set[int(rng.integers(0, len(train_set)))]
            y, x = (int(v) for v in rng.integers(0, train_size - size + 1, 2))
            images.append(sample.image[y : y + size, x : x + size])
            masks.append(sample.mask[y : y + size, x : x + size])
        return images, masks

    def train(make_batch):
        torch.manual_seed(seed)
        model = SamForSemanticSegmentation(config).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(steps):
            images, masks = make_batch()
            inputs = processor.preprocess(images, segmentation_maps=masks)
            logits = model(pixel_values=inputs["pixel_values"]).logits
            loss = F.cross_entropy(logits, inputs["labels"], weight=class_weight, ignore_index=255)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return LoSamPipeline(model.eval(), processor, device="cpu", dtype="fp32")

    def dice(pred: np.ndarray, ref: np.ndarray) -> float:
        p, r = pred == 1, ref == 1
        return 2.0 * float((p & r).sum()) / max(1.0, float(p.sum() + r.sum()))

    tests = [fundus(size=s, seed=seed + 100 + i) for i, s in enumerate(test_sizes)]
    results: dict = {}
    for trained_on, make_batch in (("whole images", batch_whole), ("native crops", batch_crops)):
        pipe = train(make_batch)
        for mode in (None, size, train_size):
            key = "whole image" if mode is None else f"tile {mode}"
            row = results.setdefault((trained_on, key), {"dice": [], "windows": [], "seconds": []})
            for sample in tests:
                started = time.perf_counter()
                result = pipe(sample.image, tile=mode, batch_size=16)
                row["seconds"].append(round(time.perf_counter() - started, 2))
                row["dice"].append(round(dice(result.label_map, sample.mask), 3))
                row["windows"].append(result.tiles)
    return {"train_size": train_size, "test_sizes": list(test_sizes), "results": results}


if __name__ == "__main__":  # pragma: no cover - the measurement, run by hand
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    report = benchmark_tiling()
    print("trained at", report["train_size"], "px; test images:", report["test_sizes"])
    for (trained_on, mode), values in report["results"].items():
        print(f"{trained_on:13s} {mode:12s} dice {values['dice']} windows {values['windows']} s {values['seconds']}")
