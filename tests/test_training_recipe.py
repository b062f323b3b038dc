"""The paper preset is the authors' recipe (#11.5), training input on the device (#14.4), and what training refuses or
keeps when a run goes wrong (#15.2, #15.5, #15.7)."""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
from itertools import permutations

import numpy as np
import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file

from losam_peft import SamForSemanticSegmentation
from losam_peft.cli import main as cli_main
from losam_peft.data.samples import Sample
from losam_peft.data.synthetic import make_samples
from losam_peft.image_processing_losam import LoSamImageProcessor
from losam_peft.training import PRESETS, PreparedSamples, TrainingConfig, TrainingError, train
from losam_peft.training.samples import Augmentation, apply_augmentation, draw_augmentation, shift_hue


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    SamForSemanticSegmentation(tiny_config()).save_pretrained(path)
    return path


def _samples(n=2, seed=1):
    return [Sample(s.image, s.mask, s.id, s.fov) for s in make_samples("fundus", n, size=48, seed=seed)]


def _run(tmp_path, name, base_dir, samples=None, **overrides):
    config = dict(output_dir=str(tmp_path / name), base=str(base_dir), max_steps=4, log_with="none")
    config.update(overrides)
    return train(TrainingConfig(**config), samples or _samples(), progress=False)


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# -- the reference's colour jitter, against an independent implementation ---------------------------------------------
def _reference_jitter(image: np.ndarray, ops) -> np.ndarray:
    """albumentations' ColorJitter on a float (h, w, 3) image as its documentation describes it, written per pixel
    with Python's colorsys for the hue: each operation clips to [0, 1]; contrast and saturation use luma grey."""
    out = image.astype(np.float64).copy()
    for name, factor in ops:
        luma = out @ np.array([0.299, 0.587, 0.114])
        if name == "brightness":
            out = np.clip(out * factor, 0, 1)
        elif name == "contrast":
            out = np.clip(out * factor + luma.mean() * (1 - factor), 0, 1)
        elif name == "saturation":
            out = np.clip(out * factor + luma[..., None] * (1 - factor), 0, 1)
        else:
            flat = out.reshape(-1, 3)
            for i, (r, g, b) in enumerate(flat):
                h, s, v = colorsys.rgb_to_hsv(r, g, b)
                flat[i] = colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)
            out = flat.reshape(out.shape)
    return out


def test_hue_shift_equals_colorsys():
    rng = np.random.default_rng(0)
    image = rng.random((12, 9, 3))
    image[0, 0] = 0.5  # grey: no hue
    image[0, 1] = 0.0
    for shift in (-0.2, -0.05, 0.13, 0.2):
        ours = shift_hue(torch.from_numpy(image).permute(2, 0, 1).float(), shift).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, _reference_jitter(image, [("hue", shift)]), atol=2e-6)


def test_reference_jitter_equals_an_independent_implementation():
    rng = np.random.default_rng(1)
    image = rng.random((10, 14, 3))
    label = torch.zeros(16, 16, dtype=torch.long)
    ops = (("saturation", 1.17), ("hue", -0.12), ("brightness", 1.19), ("contrast", 0.83))
    params = Augmentation(ops, "luma", flip_vertical=False, flip_horizontal=False)
    ours, _ = apply_augmentation(torch.from_numpy(image).permute(2, 0, 1).float(), label, params)
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), _reference_jitter(image, ops), atol=3e-6)


def test_reference_draws_follow_the_recipe():
    draws = [draw_augmentation(torch.Generator().manual_seed(seed), "reference") for seed in range(3000)]
    jittered = [d for d in draws if d.colour]
    assert 0.45 < len(jittered) / len(draws) < 0.55  # the whole jitter with p=0.5
    assert all(d.grey == "luma" for d in draws)
    orders = {tuple(name for name, _ in d.colour) for d in jittered}
    assert orders == set(permutations(("brightness", "contrast", "saturation", "hue")))  # random order, all 24
    factors = {name: [f for d in jittered for n, f in d.colour if n == name] for name in ("brightness", "hue")}
    assert 0.8 <= min(factors["brightness"]) and max(factors["brightness"]) <= 1.2
    assert -0.2 <= min(factors["hue"]) < -0.19 and 0.19 < max(factors["hue"]) <= 0.2
    for flip in ("flip_vertical", "flip_horizontal"):
        assert 0.45 < np.mean([getattr(d, flip) for d in draws]) < 0.55


def test_paper_preset_is_the_reference_recipe():
    config = TrainingConfig(output_dir="x", preset="paper")
    assert (config.image_size, config.epochs, config.batch_size) == (1024, 32, 1)
    assert (config.processor_mode, config.jitter, config.ignore_outside_fov) == ("paper", "reference", False)
    assert config.mixed_precision == "fp16" and PRESETS["paper"]["mixed_precision"] == "fp16"
    # whatever the caller sets wins
    assert TrainingConfig(output_dir="x", preset="paper", jitter="bcs", mixed_precision="no").jitter == "bcs"


def test_loss_counts_every_pixel_without_fov_masking():
    image, label = np.full((8, 8, 3), 0.5), np.ones((8, 8), np.int64)
    fov = np.zeros((8, 8), bool)
    fov[2:6, 2:6] = True
    processor = LoSamImageProcessor(image_size=8, mode="paper")
    kept = PreparedSamples([Sample(image, label, "a", fov)], processor, 2, ignore_outside_fov=True)
    every = PreparedSamples([Sample(image, label, "a", fov)], processor, 2, ignore_outside_fov=False)
    assert (kept.labels[0] == 255).sum() == 64 - 16
    assert (every.labels[0] == 1).all()


def test_paper_preset_runs_bf16_off_cuda_with_a_note(tmp_path, base_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the paper preset runs fp16 there")
    result = _run(tmp_path, "paper", base_dir, preset="paper", image_size=64, max_steps=2)
    record = json.loads((result.output_dir / "train_config.json").read_text())
    assert record["mixed_precision"] == "bf16" and record["jitter"] == "reference"
    assert record["ignore_outside_fov"] is False
    assert "needs a CUDA device" in capsys.readouterr().out


def test_samples_live_on_the_training_device_and_augment_there():
    samples = _samples(1)
    processor = LoSamImageProcessor(image_size=64)
    data = PreparedSamples(samples, processor, 2, device="cpu", jitter="reference")
    assert data.pixels[0].dtype == torch.uint8 and data.pixels[0].device.type == "cpu"
    first = data.batch([0], [7], augment=True)
    again = data.batch([0], [7], augment=True)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # the draw depends on the seed only


def test_gradient_checkpointing_trains_the_same_weights(tmp_path, base_dir):
    plain = _run(tmp_path, "plain", base_dir)
    checkpointed = _run(tmp_path, "ckpt", base_dir, gradient_checkpointing=True)
    a = load_file(os.path.join(plain.output_dir, "adapter_model.safetensors"))
    b = load_file(os.path.join(checkpointed.output_dir, "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_compile_is_handed_to_accelerate(tmp_path, base_dir, monkeypatch):
    from losam_peft.training import loop

    seen = {}
    original = loop.Accelerator

    def accelerator(*args, **kwargs):
        seen["dynamo_backend"] = kwargs.get("dynamo_backend")
        kwargs["dynamo_backend"] = None  # compiling the tiny model on 2 cores is slow; the hand-over is what is tested
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "Accelerator", accelerator)
    _run(tmp_path, "compiled", base_dir, compile=True, max_steps=1)
    assert seen["dynamo_backend"] == "inductor"


# -- output folders --------------------------------------------------------------------------------------------------
def test_training_into_a_folder_with_another_adapter_is_refused(tmp_path, base_dir):
    _run(tmp_path, "run", base_dir)
    before = _hashes(tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds an adapter.*overwrite.*resume_from"):
        _run(tmp_path, "run", base_dir, seed=3)
    assert _hashes(tmp_path / "run") == before
    _run(tmp_path, "run", base_dir, seed=3, overwrite=True)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["seed"] == 3


def test_cli_refuses_another_adapters_folder(tmp_path, base_dir, capsys):
    _run(tmp_path, "run", base_dir)
    capsys.readouterr()
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(image)
    Image.fromarray((np.random.default_rng(1).random((32, 32)) > 0.5).astype(np.uint8)).save(tmp_path / "mask.png")
    args = ["train", "--base", str(base_dir), "--train-image", str(image), "--train-mask", str(tmp_path / "mask.png"),
            "--max-steps", "1", "--output-dir", str(tmp_path / "run"), "--quiet", "--log-with", "none"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and "--resume-from" in err
    assert cli_main([*args, "--overwrite"]) == 0


def test_a_failed_run_leaves_the_folder_describing_its_adapter(tmp_path, base_dir, monkeypatch):
    _run(tmp_path, "run", base_dir)
    kept = {k: v for k, v in _hashes(tmp_path / "run").items() if not k.startswith("checkpoint")}
    original = PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("nan") if calls["n"] == 3 else pixels), labels

    monkeypatch.setattr(PreparedSamples, "batch", batch)
    with pytest.raises(TrainingError, match="loss became nan"):
        _run(tmp_path, "run", base_dir, seed=5, overwrite=True, save_every=1)
    now = {k: v for k, v in _hashes(tmp_path / "run").items() if not k.startswith("checkpoint")}
    assert now == kept  # the adapter, its card, metrics.json and train_config.json are the first run's, untouched


def test_resume_after_nan_with_a_lower_learning_rate_as_the_message_says(tmp_path, base_dir, monkeypatch):
    original = PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("nan") if calls["n"] == 3 else pixels), labels

    monkeypatch.setattr(PreparedSamples, "batch", batch)
    with pytest.raises(TrainingError) as failure:
        _run(tmp_path, "nan", base_dir, max_steps=6, save_every=1)
    message = str(failure.value)
    assert "--resume-from" in message and "--learning-rate 0.025" in message
    monkeypatch.setattr(PreparedSamples, "batch", original)
    checkpoint = tmp_path / "nan" / "checkpoint"
    result = _run(tmp_path, "nan", base_dir, max_steps=6, save_every=1, learning_rate=0.025,
                  resume_from=str(checkpoint))  # fmt: skip
    assert result.steps == 6
    record = json.loads((tmp_path / "nan" / "train_config.json").read_text())
    assert record["learning_rate"] == 0.025
    assert record["resume_changes"] == [{"learning_rate": [0.05, 0.025], "step": 2}]


@pytest.mark.parametrize("damage", ["garbage-json", "not-a-state", "truncated-weights", "empty-weights"])
def test_damaged_checkpoint_is_one_error_naming_the_file(tmp_path, base_dir, damage):
    _run(tmp_path, "run", base_dir)
    checkpoint = tmp_path / "run" / "checkpoint"
    target = checkpoint / ("state.json" if "json" in damage or "state" in damage else "state.safetensors")
    data = target.read_bytes()
    target.write_bytes({"garbage-json": b"{not json", "not-a-state": b"[1, 2]", "truncated-weights": data[: len(data) // 2],
                        "empty-weights": b""}[damage])  # fmt: skip
    with pytest.raises(TrainingError, match=str(target).replace("/", ".")):
        _run(tmp_path, "run", base_dir, resume_from=str(checkpoint))


def test_reduction_must_divide_the_hidden_size(tmp_path, base_dir):
    with pytest.raises(TrainingError, match="reduction 5 does not divide the encoder's hidden size 32"):
        _run(tmp_path, "r", base_dir, reduction=5)
    assert not (tmp_path / "r" / "adapter_config.json").exists()


def test_a_second_run_into_the_same_folder_refuses_while_the_first_writes(tmp_path, base_dir):
    from losam_peft.atomic import output_lock
    from losam_peft.errors import OutputExistsError

    with output_lock(tmp_path / "busy"):  # as a first run holds it
        with pytest.raises(OutputExistsError, match=r"being written by another run \(pid \d+"):
            _run(tmp_path, "busy", base_dir)
    assert _run(tmp_path, "busy", base_dir).steps == 4  # free again once the first is done
    assert not (tmp_path / "busy" / ".losam-lock").exists()


def test_training_runs_outside_the_main_thread(tmp_path, base_dir):
    import threading

    outcome = {}

    def run():
        try:
            outcome["result"] = _run(tmp_path, "thread", base_dir, max_steps=1)
        except Exception as err:  # noqa: BLE001 - reported below
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].steps == 1


def test_the_launcher_s_precision_wins_over_the_paper_preset(tmp_path, base_dir, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as accelerate launch --mixed_precision bf16 sets it
    result = _run(tmp_path, "launched", base_dir, preset="paper", image_size=64, max_steps=1)
    assert json.loads((result.output_dir / "train_config.json").read_text())["mixed_precision"] == "bf16"
    assert "launcher's mixed precision (bf16)" in capsys.readouterr().out
