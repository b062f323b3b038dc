"""One-shot and few-shot training, determinism, resume, DDP on CPU, and bad input (issue 3)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_config
from PIL import Image
from safetensors.torch import load_file

from losam_peft import SamForSemanticSegmentation
from losam_peft.cli import main as cli_main
from losam_peft.data.samples import Sample
from losam_peft.data.synthetic import make_samples, save_folder
from losam_peft.training import TrainingConfig, TrainingError, poly_lr, train

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
    import losam_peft.training as training

    reference = _weights(_run(tmp_path, "full", base_dir).output_dir)

    original = training._train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C during the 4th step
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", interrupted)
    result = _run(tmp_path, "cut", base_dir)
    assert result.interrupted and result.steps == 3
    checkpoint = tmp_path / "cut" / "checkpoint"
    assert (checkpoint / "state.safetensors").is_file() and (checkpoint / "state.json").is_file()
    monkeypatch.setattr(training, "_train_step", original)
    resumed = _run(tmp_path, "cut", base_dir, resume_from=str(checkpoint))
    assert resumed.steps == STEPS
    weights = _weights(resumed.output_dir)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_resume_with_other_settings_is_refused(tmp_path, base_dir):
    _run(tmp_path, "x", base_dir)
    with pytest.raises(TrainingError, match="other settings.*learning_rate"):
        _run(tmp_path, "x", base_dir, learning_rate=0.01, resume_from=str(tmp_path / "x" / "checkpoint"))


def test_sigterm_leaves_a_usable_checkpoint(tmp_path, base_dir, synthetic_folder):
    out = tmp_path / "term"
    script = (
        "import os, signal, sys\n"
        "import losam_peft.training as t\n"
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
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resume with --resume-from" in done.stdout
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert cli_main([*args, "--resume-from", str(out / "checkpoint")]) == 0
    assert json.loads((out / "history.json").read_text())[-1]["step"] == 8


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, base_dir, monkeypatch):
    import losam_peft.training as training

    original = training._PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("nan") if calls["n"] == 4 else pixels), labels

    monkeypatch.setattr(training._PreparedSamples, "batch", batch)
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
        ("not_sam", "not a SAM checkpoint"),
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
    import losam_peft.training as training

    original = training._PreparedSamples.batch
    calls = {"n": 0}

    def batch(self, *args, **kwargs):
        calls["n"] += 1
        pixels, labels = original(self, *args, **kwargs)
        return (pixels * float("inf") if calls["n"] == 2 else pixels), labels

    monkeypatch.setattr(training._PreparedSamples, "batch", batch)
    with pytest.warns(UserWarning, match="without autocast or loss scaling"):
        with pytest.raises(TrainingError, match="loss became nan at step 2"):
            _run(tmp_path, "fp16", base_dir, mixed_precision="fp16", max_steps=4, save_every=1)
    weights = load_file(tmp_path / "fp16" / "checkpoint" / "state.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
