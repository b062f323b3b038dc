"""One-shot and few-shot training, determinism, resume, DDP on CPU, and bad input (issue 3)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, tiny_config
from PIL import Image
from safetensors.torch import load_file

from losam_peft import LoSamImageProcessor, LoSamPipeline, SamForSemanticSegmentation
from losam_peft.cli import main as cli_main
from losam_peft.data.samples import Sample
from losam_peft.data.synthetic import make_samples, save_folder
from losam_peft.evaluation import evaluate_adapter
from losam_peft.training import PRESETS, PreparedSamples, TrainingConfig, TrainingError, loop, poly_lr, train

STEPS = 6


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random SAM checkpoint written by save_pretrained, loaded by path like a real one."""
    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    SamForSemanticSegmentation(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    samples = make_samples("fundus", 3, size=48, seed=5)
    save_folder(samples[:2], root / "train")
    save_folder(samples[2:], root / "eval")
    return root


def _samples(n=2, seed=1):
    return [Sample(s.image, s.mask, s.id, s.fov) for s in make_samples("fundus", n, size=48, seed=seed)]


def _run(tmp_path, name, base_dir, **overrides):
    config = dict(output_dir=str(tmp_path / name), base=str(base_dir), max_steps=STEPS, log_with="none")
    config.update(overrides)
    return train(TrainingConfig(**config), _samples(), progress=False)


def _weights(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def test_one_shot_cli_writes_adapter_card_metrics_and_config(tmp_path, base_dir, synthetic_folder, capsys):
    image = synthetic_folder / "train" / "images"
    name = sorted(p.name for p in image.iterdir())[0]
    out = tmp_path / "run"
    code = cli_main([
        "train", "--base", str(base_dir), "--labels", "background,vessel",
        "--train-image", str(image / name), "--train-mask", str(synthetic_folder / "train" / "masks" / name),
        "--eval-dir", str(synthetic_folder / "eval"), "--eval-every", "3", "--max-steps", str(STEPS),
        "--output-dir", str(out), "--quiet", "--log-with", "none", "--modality", "fundus", "--task", "vessels",
    ])  # fmt: skip
    assert code == 0
    for file in ["adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json",
                 "train_config.json", "preprocessor_config.json", "loss_curve.png", "history.json"]:  # fmt: skip
        assert (out / file).is_file(), file
    metrics = json.loads((out / "metrics.json").read_text())
    vessel = metrics["per_class"]["1"]
    assert {"precision", "recall", "dice", "bm", "iou"} <= set(vessel)
    assert all(vessel[k] is None or 0 <= vessel[k] <= 1 for k in ("precision", "recall", "dice", "iou"))
    assert metrics["train_ids"] == [name.rsplit(".", 1)[0]]
    record = json.loads((out / "train_config.json").read_text())
    assert record["max_steps"] == STEPS and record["id2label"] == {"0": "background", "1": "vessel"}
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir)
    assert adapter_config["modality"] == "fundus"
    printed = capsys.readouterr().out
    assert "adapter written to" in printed and "Dice" in printed


def test_few_shot_folder_and_shots_are_recorded(tmp_path, base_dir, synthetic_folder):
    out = tmp_path / "few"
    code = cli_main([
        "train", "--base", str(base_dir), "--train-dir", str(synthetic_folder / "train"), "--shots", "1",
        "--shot-seed", "3", "--max-steps", "3", "--output-dir", str(out), "--quiet", "--log-with", "none",
    ])  # fmt: skip
    assert code == 0
    record = json.loads((out / "train_config.json").read_text())
    assert len(record["train_ids"]) == 1
    assert record["id2label"] == {"0": "background", "1": "vessel"}  # read from the folder's id2label.json


def test_recipe_defaults_and_poly_schedule(tmp_path, base_dir):
    config = TrainingConfig(output_dir=str(tmp_path))
    assert (config.learning_rate, config.momentum, config.weight_decay, config.nesterov) == (0.05, 0.9, 5e-4, True)
    assert config.epochs == 32
    paper = TrainingConfig(output_dir=str(tmp_path), preset="paper")
    assert (paper.image_size, paper.epochs) == (1024, 32)
    result = _run(tmp_path, "poly", base_dir)
    lrs = [r["lr"] for r in result.history]
    assert lrs == pytest.approx([poly_lr(s, STEPS, 0.05, 0.9) for s in range(STEPS)])


def test_paper_preset_uses_plain_resize_and_half_mean(tmp_path, base_dir):
    result = _run(tmp_path, "paper", base_dir, preset="paper", image_size=64, epochs=2, max_steps=None)
    processor = json.loads((result.output_dir / "preprocessor_config.json").read_text())
    assert processor["mode"] == "paper" and processor["image_mean"] == [0.5, 0.5, 0.5]
    assert result.steps == 4  # 2 epochs of 2 images, batch 1


def test_every_setting_is_documented_and_checked():
    for f in dataclasses.fields(TrainingConfig):
        assert f.metadata.get("help"), f.name
        if f.metadata.get("choices") and f.default not in (dataclasses.MISSING, None):
            assert f.default in f.metadata["choices"], f.name
    assert "paper" in PRESETS and list(PRESETS) == ["default", "paper"] and not PRESETS["default"]
    with pytest.raises(TrainingError, match="mixed_precision must be one of no, fp16, bf16, got 'fp8'"):
        TrainingConfig(output_dir="x", mixed_precision="fp8")
    with pytest.raises(TrainingError, match="preset must be one of default, paper"):
        TrainingConfig(output_dir="x", preset="reference")
    with pytest.raises(TrainingError, match="batch_size must be at least 1, got 0"):
        TrainingConfig(output_dir="x", batch_size=0)


def test_a_preset_fills_in_only_the_settings_not_given():
    paper = TrainingConfig(output_dir="x", preset="paper")
    assert {k: getattr(paper, k) for k in PRESETS["paper"]} == dict(PRESETS["paper"])
    assert paper.processor_mode == "paper"
    mixed = TrainingConfig(output_dir="x", preset="paper", processor_mode="sam", image_size=None, epochs=3)
    assert (mixed.processor_mode, mixed.image_size, mixed.epochs) == ("sam", 1024, 3)  # None counts as not given
    assert dataclasses.replace(mixed, output_dir="y").processor_mode == "sam"
    steps_only = TrainingConfig(output_dir="x", max_steps=5)
    assert (steps_only.epochs, steps_only.image_size, steps_only.processor_mode) == (None, None, "sam")


@pytest.mark.parametrize("mode", ["sam", "paper"])
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_training_pixels_and_labels_are_the_image_processors(mode, shape):
    processor = LoSamImageProcessor(image_size=64, mode=mode)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    label = (rng.random(shape) > 0.7).astype(np.uint8)
    fov = np.ones(shape, bool)
    fov[:5] = False
    pixels, labels = PreparedSamples([Sample(image, label, "x", fov)], processor, 2).batch([0], [1], augment=False)
    expected = processor(image, segmentation_maps=np.where(fov, label, 255))
    assert torch.equal(labels, expected["labels"])
    if processor.resized_size(*shape) == shape:  # nothing resized: 8-bit pixels are kept exactly
        assert torch.equal(pixels, expected["pixel_values"])
    else:  # the resized content is cached as uint8: within half a grey level
        tolerance = 0.5 / 255 / min(processor.image_std) + 1e-6
        assert (pixels - expected["pixel_values"]).abs().max() <= tolerance


def test_training_metrics_are_evaluate_adapters_on_the_written_adapter(tmp_path, base_dir):
    out = tmp_path / "evaluated"
    eval_samples = _samples(2, seed=9)
    config = TrainingConfig(output_dir=str(out), base=str(base_dir), max_steps=3, log_with="none")
    result = train(config, _samples(), eval_samples, progress=False)
    assert result.best_step == 3  # evaluated once, at the end: the written adapter is the final one
    pipe = LoSamPipeline.from_pretrained(out, device="cpu", dtype="fp32")
    again = evaluate_adapter(pipe, eval_samples, progress=False, num_overlays=0, plot=False)
    assert result.metrics["per_class"] == again["per_class"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["mean_foreground"]["dataset"]["dice"] == again["mean_foreground"]["dataset"]["dice"]
    assert written["evaluation"]["dtype"] == "float32" and written["evaluation"]["num_images"] == 2


def test_a_resumed_run_keeps_the_best_evaluation_made_before_the_interruption(tmp_path, base_dir, monkeypatch):
    scores = iter([0.9, 0.1, 0.1])  # the evaluation at step 2 stays the best
    monkeypatch.setattr(loop, "mean_foreground_dice", lambda metrics: next(scores))
    original, calls = loop._train_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", interrupted)
    config = dict(output_dir=str(tmp_path / "best"), base=str(base_dir), max_steps=6, eval_every=2, log_with="none")
    assert train(TrainingConfig(**config), _samples(), val_samples=_samples(1, seed=9), progress=False).interrupted
    monkeypatch.setattr(loop, "_train_step", original)
    checkpoint = tmp_path / "best" / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    del state["config"]["processor_mode"]  # a checkpoint of a release that did not record it still resumes
    (checkpoint / "state.json").write_text(json.dumps(state))
    resumed = train(TrainingConfig(**config, resume_from=str(checkpoint)), _samples(), val_samples=_samples(1, seed=9),
                    progress=False)  # fmt: skip
    assert resumed.steps == 6 and resumed.best_step == 2
    assert resumed.metrics["step"] == 2 and resumed.metrics["per_class"]


def test_seeded_runs_are_identical(tmp_path, base_dir):
    first = _weights(_run(tmp_path, "a", base_dir, seed=7).output_dir)
    second = _weights(_run(tmp_path, "b", base_dir, seed=7).output_dir)
    other = _weights(_run(tmp_path, "c", base_dir, seed=8).output_dir)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_gradient_accumulation_and_bf16_run(tmp_path, base_dir):
    result = _run(tmp_path, "acc", base_dir, gradient_accumulation_steps=2, mixed_precision="bf16", max_steps=3)
    assert result.steps == 3 and all(np.isfinite(r["loss"]) for r in result.history)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, base_dir, monkeypatch):
    reference = _weights(_run(tmp_path, "full", base_dir).output_dir)

    original = loop._train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C during the 4th step
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", interrupted)
    result = _run(tmp_path, "cut", base_dir)
    assert result.interrupted and result.steps == 3
    checkpoint = tmp_path / "cut" / "checkpoint"
    assert (checkpoint / "state.safetensors").is_file() and (checkpoint / "state.json").is_file()
    monkeypatch.setattr(loop, "_train_step", original)
    resumed = _run(tmp_path, "cut", base_dir, resume_from=str(checkpoint))
    assert resumed.steps == STEPS
    weights = _weights(resumed.output_dir)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_resume_with_other_settings_is_refused(tmp_path, base_dir):
    _run(tmp_path, "x", base_dir)
    with pytest.raises(TrainingError, match="other settings.*momentum.*only learning_rate may change"):
        _run(tmp_path, "x", base_dir, momentum=0.5, resume_from=str(tmp_path / "x" / "checkpoint"))


def test_sigterm_leaves_a_usable_checkpoint(tmp_path, base_dir, synthetic_folder):
    out = tmp_path / "term"
    script = (
        "import os, signal, sys\n"
        "import losam_peft.training.loop as t\n"
        "original = t._train_step\n"
        "calls = []\n"
        "def step(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return original(*a, **k)\n"
        "t._train_step = step\n"
        "from losam_peft.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["train", "--base", str(base_dir), "--train-dir", str(synthetic_folder / "train"), "--max-steps", "8",
            "--output-dir", str(out), "--quiet", "--log-with", "none"]  # fmt: skip
    (out / ".checkpoint-leftover").mkdir(parents=True)  # a staging folder left by a killed run
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + 15, done.stderr  # saved, and the shell learns the run was terminated
    assert "resume with --resume-from" in done.stdout
    assert not list(out.glob(".checkpoint-*"))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert cli_main([*args, "--resume-from", str(out / "checkpoint")]) == 0
    assert json.loads((out / "history.json").read_text())[-1]["step"] == 8


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, base_dir, monkeypatch):
    original = PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("nan") if calls["n"] == 4 else pixels), labels

    monkeypatch.setattr(PreparedSamples, "batch", batch)
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*last good checkpoint is kept"):
        _run(tmp_path, "nan", base_dir, max_steps=10, save_every=1)
    state = json.loads((tmp_path / "nan" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    weights = load_file(tmp_path / "nan" / "checkpoint" / "state.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_diverging_weights_are_never_checkpointed(tmp_path, base_dir):
    with pytest.raises(TrainingError, match=r"became (nan|inf).*training stopped"):
        _run(tmp_path, "blowup", base_dir, learning_rate=1e30, max_steps=20, save_every=1)
    checkpoint = tmp_path / "blowup" / "checkpoint" / "state.safetensors"
    if checkpoint.exists():
        assert all(torch.isfinite(v.float()).all() for v in load_file(checkpoint).values())


@pytest.mark.skipif(os.environ.get("LOSAM_SKIP_DDP") == "1", reason="LOSAM_SKIP_DDP=1")
def test_two_process_data_parallel_on_cpu_ends_with_identical_replicas(tmp_path, base_dir, synthetic_folder):
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", MASTER_PORT="29533")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        str(REPO / "examples" / "train.py"), "--base", str(base_dir), "--train-dir", str(synthetic_folder / "train"),
        "--max-steps", "3", "--output-dir", str(out), "--quiet", "--log-with", "none",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["processes"] == 2
    assert len(record["replica_fingerprints"]) == 2 and record["replicas_identical"] is True
    assert (out / "adapter_model.safetensors").is_file()


# -- bad input -------------------------------------------------------------------------------------------------------
def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_image", "the training image does not exist"),
        ("size_mismatch", "the mask is 30×20 pixels but the image"),
        ("values_outside", r"mask values \[5\] are outside the label set"),
        ("rgb_not_palette", "not in losam-peft's label palette"),
        ("empty_dir", "empty|no image"),
        ("not_sam", "not a supported base model"),
        ("only_mask", "needs both --train-image and --train-mask"),
    ],
)
def test_bad_training_input_fails_before_training(tmp_path, base_dir, case, message, capsys):
    image = _write(tmp_path / "img.png", np.zeros((20, 20, 3), np.uint8))
    mask = _write(tmp_path / "mask.png", (np.eye(20) * 255).astype(np.uint8))
    args = ["--train-image", str(image), "--train-mask", str(mask)]
    base = str(base_dir)
    if case == "missing_image":
        args[1] = str(tmp_path / "nope.png")
    elif case == "size_mismatch":
        args[3] = str(_write(tmp_path / "small.png", np.zeros((20, 30), np.uint8)))
    elif case == "values_outside":
        values = np.zeros((20, 20), np.uint8)
        values[:5], values[5:10], values[10:] = 1, 5, 0
        args[3] = str(_write(tmp_path / "multi.png", values))
    elif case == "rgb_not_palette":
        rgb = np.zeros((20, 20, 3), np.uint8)
        rgb[:5] = (10, 200, 30)
        rgb[5:10] = (200, 10, 30)
        args[3] = str(_write(tmp_path / "rgb.png", rgb))
    elif case == "empty_dir":
        (tmp_path / "empty" / "images").mkdir(parents=True)
        (tmp_path / "empty" / "masks").mkdir(parents=True)
        args = ["--train-dir", str(tmp_path / "empty")]
    elif case == "not_sam":
        from transformers import BertConfig

        BertConfig().save_pretrained(tmp_path / "bert")
        base = str(tmp_path / "bert")
    elif case == "only_mask":
        args = args[2:]
    out = tmp_path / "out"
    code = cli_main(["train", "--base", base, *args, "--labels", "background,vessel", "--max-steps", "2",
                     "--output-dir", str(out), "--quiet", "--log-with", "none"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert not (out / "adapter_model.safetensors").exists()


def test_named_dataset_with_shots_and_eval_split_and_tensorboard_logs(tmp_path, base_dir):
    from fixtures_datasets import make_drive

    make_drive(tmp_path / "DRIVE")
    out = tmp_path / "drive"
    code = cli_main([
        "train", "--base", str(base_dir), "--dataset", "drive", "--data-root", str(tmp_path / "DRIVE"),
        "--split", "training", "--shots", "1", "--shot-seed", "2", "--eval-split", "test", "--max-steps", "2",
        "--output-dir", str(out), "--quiet", "--log-with", "tensorboard",
    ])  # fmt: skip
    assert code == 0
    record = json.loads((out / "train_config.json").read_text())
    assert len(record["train_ids"]) == 1 and record["datasets"] == ["drive"]
    assert record["modality"] == "fundus"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_ids"] == record["train_ids"] and metrics["eval_ids"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_fp16_without_a_loss_scaler_stops_on_nan_like_fp32(tmp_path, base_dir, monkeypatch):
    """On CPU Accelerate gives fp16 no GradScaler, so a non-finite loss must stop training, not slip through."""
    original = PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("inf") if calls["n"] == 2 else pixels), labels

    monkeypatch.setattr(PreparedSamples, "batch", batch)
    with pytest.warns(UserWarning, match="without autocast or loss scaling"):
        with pytest.raises(TrainingError, match="loss became nan at step 2"):
            _run(tmp_path, "fp16", base_dir, mixed_precision="fp16", max_steps=4, save_every=1)
    weights = load_file(tmp_path / "fp16" / "checkpoint" / "state.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_the_saved_step_is_chosen_on_validation_only(tmp_path, base_dir, monkeypatch):
    # validation Dice peaks at step 2, evaluation Dice at step 4: the saved adapter is step 2's
    scores = {"the validation set": iter([0.9, 0.1, 0.1]), "eval": iter([0.1, 0.9, 0.1])}
    real = loop.evaluate_adapter

    def scored(pipe, samples, id2label, output_dir, **kwargs):
        result = real(pipe, samples, id2label, output_dir, **kwargs)
        key = "the validation set" if kwargs.get("dataset_name") == "the validation set" else "eval"
        result["mean_foreground"]["dataset"]["dice"] = next(scores[key])
        return result

    monkeypatch.setattr(loop, "evaluate_adapter", scored)
    config = TrainingConfig(output_dir=str(tmp_path / "run"), base=str(base_dir), max_steps=6, eval_every=2,
                            log_with="none")  # fmt: skip
    result = train(config, _samples(), _samples(1, seed=9), val_samples=_samples(1, seed=5), progress=False)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.best_step == 2 and written["step"] == 2
    assert written["selection"]["by"] == "validation" and written["validation"]["mean_foreground_dice"] == 0.9
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r.get("eval_dice") for r in history if "eval_dice" in r] == [0.1, 0.9, 0.1]


def test_without_validation_the_final_step_is_saved(tmp_path, base_dir):
    config = TrainingConfig(output_dir=str(tmp_path / "run"), base=str(base_dir), max_steps=4, eval_every=1,
                            log_with="none")  # fmt: skip
    result = train(config, _samples(), _samples(1, seed=9), progress=False)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.best_step == 4 and written["step"] == 4 and written["selection"]["by"] == "final step"


def test_accelerate_decides_the_precision_when_none_is_given(tmp_path, base_dir, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    config = TrainingConfig(output_dir=str(tmp_path / "run"), base=str(base_dir), max_steps=1, log_with="none")
    train(config, _samples(), progress=False)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["mixed_precision"] == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    config = TrainingConfig(output_dir=str(tmp_path / "run2"), base=str(base_dir), max_steps=1, log_with="none")
    train(config, _samples(), progress=False)
    assert json.loads((tmp_path / "run2" / "train_config.json").read_text())["mixed_precision"] == "no"


def test_a_config_built_in_python_refuses_what_the_command_line_refuses():
    # one range check for both: a NaN learning rate slipped through every comparison before
    for bad in ({"learning_rate": float("nan")}, {"learning_rate": 0.0}, {"epochs": 0}, {"seed": -1}):
        with pytest.raises(TrainingError):
            TrainingConfig(output_dir="x", **bad)


def test_val_fraction_holds_out_training_images_deterministically(synthetic_folder):
    from losam_peft.data.sources import load_training_data

    first = load_training_data(train_dir=str(synthetic_folder / "train"), val_fraction=0.5)
    again = load_training_data(train_dir=str(synthetic_folder / "train"), val_fraction=0.5)
    train_ids, val_ids = [s.id for s in first.train], [s.id for s in first.val]
    assert len(val_ids) == 1 and len(train_ids) == 1 and not set(train_ids) & set(val_ids)
    assert val_ids == [s.id for s in again.val] and first.val_source == "val_fraction"
