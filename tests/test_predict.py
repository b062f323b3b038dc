"""Batch prediction: tiling (exact blending), folder runs with bad files, outputs, summary CSV, resume."""

import csv
import io
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from losam_peft import LoSamImageProcessor
from losam_peft.pipeline import LoSamPipeline
from losam_peft.predict import (
    PredictionError,
    blend_weights,
    count_tiles,
    iter_input_files,
    predict_paths,
    tile_starts,
    tiled_probabilities,
)


class PointwiseModel(nn.Module):
    """A per-pixel classifier: tiles and the whole image must give exactly the same probabilities."""

    def __init__(self, image_size=32, num_labels=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_labels, 1)
        self.config = type(
            "Config", (), {"image_size": image_size, "id2label": {i: f"c{i}" for i in range(num_labels)}}
        )

    def forward(self, pixel_values):
        return SemanticSegmenterOutput(logits=self.conv(pixel_values) * 3.0)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe():
    model = tiny_model()
    with torch.no_grad():  # a head that predicts both classes
        model.segmentation_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    pipeline = LoSamPipeline(model, LoSamImageProcessor(image_size=64), device="cpu", dtype="fp32",
                             id2label={0: "background", 1: "vessel"})  # fmt: skip
    return pipeline


# -- tiling ------------------------------------------------------------------------------------------------------------
def test_tile_starts_cover_the_image_and_end_flush():
    assert tile_starts(50, 64, 48) == [0]
    assert tile_starts(64, 64, 48) == [0]
    assert tile_starts(100, 64, 48) == [0, 36]
    assert tile_starts(200, 64, 48) == [0, 48, 96, 136]
    for length in range(64, 300, 7):
        starts = tile_starts(length, 64, 48)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + 64] = True
        assert covered.all() and starts[-1] + 64 == length
    weights = blend_weights(64, 16)
    assert weights.min() > 0 and weights.max() == 1.0 and torch.equal(weights, weights.flip(0))
    assert count_tiles(2048, 2048, 1024, 0.25) == 9
    assert count_tiles(2336, 3504, 1024, 0.25) == 3 * 5
    assert count_tiles(2848, 4288, 1024, 0.25) == 4 * 6


@pytest.mark.parametrize("size, tile, overlap", [((100, 150), 32, 0.25), ((45, 20), 32, 0.5), ((64, 96), 32, 0.0)])
def test_tiled_blending_is_exact_for_a_per_pixel_model(size, tile, overlap):
    model = PointwiseModel(image_size=32)
    pipeline = LoSamPipeline(model, LoSamImageProcessor(image_size=32), device="cpu", dtype="fp32")
    image = _rgb(*size)
    probs, windows = tiled_probabilities(pipeline, image, tile=tile, overlap=overlap, batch_size=3)
    assert windows == count_tiles(*size, tile, overlap)
    processor = pipeline.image_processor
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    with torch.no_grad():
        expected = torch.softmax(model(((pixels - mean) / std)[None]).logits[0], dim=0)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-5)


def test_tiled_and_whole_image_agree_in_shape_and_probabilities(pipe):
    image = _rgb(150, 200, seed=2)
    whole = pipe(image, return_probabilities=True)
    tiled = pipe(image, tile=96, overlap=0.25, batch_size=4, return_probabilities=True)
    assert whole.label_map.shape == tiled.label_map.shape == (150, 200)
    np.testing.assert_allclose(tiled.probabilities.sum(0), 1.0, atol=1e-5)
    assert tiled.tiles == count_tiles(150, 200, 96, 0.25) and whole.tiles == 1
    with pytest.raises(ValueError, match="tile must be an integer"):
        pipe(image, tile=8)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        pipe(image, tile=64, overlap=1.0)


# -- folder runs -------------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(_rgb(40, 60, 1)).save(root / "a.png")
    Image.fromarray(_rgb(40, 60, 2)).save(root / "a.jpg")  # same stem as a.png
    Image.fromarray(_rgb(70, 50, 3)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(_rgb(30, 30, 4)[..., 0].astype(np.uint16) * 257).save(root / "sixteen.png")
    buffer = io.BytesIO()
    Image.fromarray(_rgb(80, 80, 5)).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[:200])
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "sub").mkdir()
    Image.fromarray(_rgb(20, 20, 6)).save(root / "sub" / "deep.png")
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_run_writes_outputs_and_reports_bad_files(tmp_path, folder, pipe):
    out = tmp_path / "out"
    summary = predict_paths(pipe, folder, out, overlay=True, probabilities=True, batch_size=2, progress=False)
    assert summary.processed == 4 and summary.resumed == 0
    assert [os.path.basename(p) for p, _ in summary.failed] == ["truncated.png"]
    assert "unreadable or truncated" in summary.failed[0][1]
    assert [os.path.basename(p) for p, _ in summary.ignored] == ["notes.txt"]
    assert "not an image file" in summary.ignored[0][1]
    assert "1 file(s) could not be segmented" in summary.describe()

    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == ["a_jpg.png", "a_png.png", "cmyk.png", "sixteen.png"]  # a.png and a.jpg share a stem
    assert sorted(p.name for p in (out / "overlays").iterdir()) == masks
    assert sorted(p.name for p in (out / "probabilities").iterdir()) == [m.replace(".png", ".npz") for m in masks]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave no temporary file

    mask = Image.open(out / "masks" / "a_png.png")
    assert mask.mode == "P" and mask.size == (60, 40)
    np.testing.assert_array_equal(np.asarray(mask), pipe(folder / "a.png").label_map)
    saved = np.load(out / "probabilities" / "a_png.npz")
    assert saved["probabilities"].shape == (2, 40, 60) and saved["probabilities"].dtype == np.float16
    assert saved["labels"].tolist() == ["background", "vessel"]
    assert Image.open(out / "overlays" / "cmyk.png").mode == "RGB"

    rows = {os.path.basename(r["file"]): r for r in _rows(out / "summary.csv")}
    assert rows["a.png"]["status"] == "ok" and (rows["a.png"]["width"], rows["a.png"]["height"]) == ("60", "40")
    assert rows["a.png"]["name"] == "a_png" and rows["a.jpg"]["name"] == "a_jpg"
    fraction = float(rows["a.png"]["fraction_vessel"])
    assert fraction == pytest.approx(float((np.asarray(mask) == 1).mean()), abs=1e-6)
    assert float(rows["a.png"]["seconds"]) >= 0
    assert rows["cmyk.jpg"]["note"] == "CMYK converted to RGB"
    assert rows["sixteen.png"]["note"].startswith("16-bit")
    assert rows["truncated.png"]["status"] == "failed" and rows["truncated.png"]["error"]
    assert rows["notes.txt"]["status"] == "ignored"
    assert ".DS_Store" not in rows and "deep.png" not in rows


def test_resume_skips_finished_images(tmp_path, folder, pipe, monkeypatch):
    out = tmp_path / "out"
    predict_paths(pipe, [folder / "a.png", folder / "cmyk.jpg"], out, progress=False)
    calls = []
    original = pipe.forward_logits
    monkeypatch.setattr(pipe, "forward_logits", lambda x: calls.append(x.shape[0]) or original(x))
    summary = predict_paths(pipe, folder, out, resume=True, progress=False)
    assert summary.resumed == 2 and summary.processed == 2 and sum(calls) == 2
    rows = {os.path.basename(r["file"]): r for r in _rows(out / "summary.csv")}
    assert rows["a.png"]["status"] == "resumed" and rows["a.png"]["fraction_vessel"]
    assert rows["cmyk.jpg"]["note"] == "CMYK converted to RGB"  # carried over from the first run's summary
    (out / "summary.csv").unlink()
    again = predict_paths(pipe, folder, out, resume=True, progress=False)
    assert again.processed == 0 and again.resumed == 4
    rows = {os.path.basename(r["file"]): r for r in _rows(out / "summary.csv")}
    assert rows["a.png"]["width"] == "60"  # rebuilt from the mask when the old summary is gone


def test_tiled_run_glob_and_recursive(tmp_path, folder, pipe):
    summary = predict_paths(pipe, str(folder / "*.png"), tmp_path / "tiled", tile=32, overlap=0.25, progress=False)
    assert summary.processed == 2 and len(summary.failed) == 1 and "tiles of 32 px" in summary.mode
    rows = {os.path.basename(r["file"]): r for r in _rows(tmp_path / "tiled" / "summary.csv")}
    assert rows["a.png"]["tiles"] == str(count_tiles(40, 60, 32, 0.25))
    deep = predict_paths(pipe, folder, tmp_path / "deep", recursive=True, progress=False)
    assert (tmp_path / "deep" / "masks" / "sub" / "deep.png").is_file() and deep.processed == 5
    assert [p.name for p in iter_input_files(folder)] == ["a.jpg", "a.png", "cmyk.jpg", "sixteen.png", "truncated.png"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(iter_input_files(tmp_path / "missing"))


def test_batched_and_single_runs_write_the_same_masks(tmp_path, folder, pipe):
    predict_paths(pipe, folder, tmp_path / "one", batch_size=1, progress=False)
    predict_paths(pipe, folder, tmp_path / "three", batch_size=3, progress=False)
    for mask in (tmp_path / "one" / "masks").iterdir():
        np.testing.assert_array_equal(
            np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "three" / "masks" / mask.name))
        )


def test_bad_outputs_and_inputs_are_clear(tmp_path, folder, pipe):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(PredictionError, match="cannot write predictions to .*file.txt"):
        predict_paths(pipe, folder, blocker / "out", progress=False)
    with pytest.raises(PredictionError, match="cannot write predictions to .*it is a file"):
        predict_paths(pipe, folder, blocker, progress=False)
    with pytest.raises(PredictionError, match="no images to segment.*no such file"):
        predict_paths(pipe, tmp_path / "nothing-here", tmp_path / "out", progress=False)
    # an output folder that breaks mid-run: every image is reported, the run finishes
    out = tmp_path / "broken"
    predict_paths(pipe, [folder / "sixteen.png"], out, progress=False)
    shutil.rmtree(out / "masks")
    (out / "masks").write_text("a file where the masks folder should be")
    summary = predict_paths(pipe, [folder / "a.png", folder / "cmyk.jpg"], out, resume=True, progress=False)
    assert summary.processed == 0 and len(summary.failed) == 2
    assert all("cannot write outputs" in reason for _, reason in summary.failed)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder(tmp_path, folder, pipe):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(PredictionError, match="cannot write predictions.*Permission denied"):
            predict_paths(pipe, folder, out, progress=False)
    finally:
        out.chmod(0o700)


def test_resume_never_reuses_a_mask_made_from_another_file(tmp_path, pipe):
    for index, sub in enumerate(("one", "two")):
        (tmp_path / sub).mkdir()
        Image.fromarray(_rgb(30, 30, 10 + index)).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    predict_paths(pipe, [tmp_path / "two" / "x.png"], out, progress=False)  # masks/x.png from two/x.png
    summary = predict_paths(pipe, [tmp_path / "one" / "x.png", tmp_path / "two" / "x.png"], out, resume=True,
                            progress=False)  # fmt: skip
    assert summary.resumed == 0 and summary.processed == 2
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "masks" / "x.png")), pipe(tmp_path / "one" / "x.png").label_map
    )


def test_compile_runs_the_forward_through_torch_compile(saved_adapter, tmp_path, monkeypatch):
    import numpy as np
    import torch
    from PIL import Image

    from losam_peft.cli import main as cli_main

    adapter, base = saved_adapter
    seen = []

    def fake_compile(model, **options):  # compiling on 2 CPU cores is slow; what is tested is that it is used
        seen.append(model)

        def forward(*args, **kwargs):
            seen.append("called")
            return model(*args, **kwargs)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    (tmp_path / "in").mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "in/a.png")
    code = cli_main(["predict", "--adapter", str(adapter), "--base", str(base), "--input", str(tmp_path / "in"),
                     "--output-dir", str(tmp_path / "out"), "--compile", "--quiet", "--num-workers", "0"])  # fmt: skip
    assert code == 0 and "called" in seen and (tmp_path / "out" / "masks" / "a.png").is_file()
