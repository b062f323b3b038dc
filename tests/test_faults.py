"""The fault suite (#15): every class of bad input or fault, run through the command line, must end with exit status
2 (refused), one ``error:`` line naming the file or option, no traceback, and every file that was there before the
run still there and unchanged (hashed)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image

from losam_peft.cli import main as cli_main


# -- a workspace with every kind of input ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Images, masks, a tiny base, a wider base, a trained adapter and a folder of images, built once."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / "set" / folder).mkdir(parents=True)
    for i in range(2):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(root / "set" / "images" / f"{i}.png")
        Image.fromarray((rng.random((48, 48)) > 0.7).astype(np.uint8)).save(root / "set" / "masks" / f"{i}.png")
    torch.manual_seed(0)
    tiny_model().save_pretrained(root / "base")
    tiny_model(hidden_size=64).save_pretrained(root / "wide-base")
    code = cli_main(["train", "--base", str(root / "base"), "--train-image", str(root / "set/images/0.png"),
                     "--train-mask", str(root / "set/masks/0.png"), "--max-steps", "2", "--save-every", "1",
                     "--output-dir", str(root / "adapter"), "--quiet", "--log-with", "none"])  # fmt: skip
    assert code == 0
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _copy(workspace: Path, tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(workspace / name, tmp_path / name)
    return tmp_path


def _refused(argv, capsys, root: Path, names: tuple[str, ...]):
    """Run ``argv``; assert the refusal contract; return the error line."""
    before = _hashes(root)
    capsys.readouterr()
    code = cli_main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, (code, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert any(name in lines[0] for name in names), (names, lines[0])
    after = _hashes(root)
    assert {k: v for k, v in after.items() if k in before} == before, "a file present before the run changed"
    assert set(before) <= set(after), "a file present before the run is gone"
    return lines[0]


def _train(root: Path, *extra: str) -> list[str]:
    return ["train", "--base", str(root / "base"), "--train-image", str(root / "set/images/0.png"),
            "--train-mask", str(root / "set/masks/0.png"), "--max-steps", "1", "--output-dir", str(root / "out"),
            "--quiet", "--log-with", "none", *extra]  # fmt: skip


# -- options checked before any work (#15.4) -------------------------------------------------------------------------
OPTION_FAULTS = {
    "epochs-negative": (["--epochs", "-1"], "--epochs"),
    "epochs-zero": (["--epochs", "0"], "--epochs"),
    "max-steps-zero": (["--max-steps", "0"], "--max-steps"),
    "learning-rate-nan": (["--learning-rate", "nan"], "--learning-rate"),
    "learning-rate-zero": (["--learning-rate", "0"], "--learning-rate"),
    "learning-rate-inf": (["--learning-rate", "inf"], "--learning-rate"),
    "momentum-one": (["--momentum", "1"], "--momentum"),
    "momentum-negative": (["--momentum", "-0.1"], "--momentum"),
    "weight-decay-negative": (["--weight-decay", "-1e-4"], "--weight-decay"),
    "weight-decay-inf": (["--weight-decay", "inf"], "--weight-decay"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "seed-huge": (["--seed", str(2**40)], "--seed"),
    "reduction-not-dividing": (["--reduction", "5"], "reduction"),
    "image-size-not-patch-multiple": (["--image-size", "60"], "60"),
    "labels-duplicate": (["--labels", "background,vessel,vessel"], "vessel"),
    "labels-one": (["--labels", "vessel"], "--labels"),
    "shots-with-train-image": (["--shots", "2"], "--shots"),
    "unknown-preset": (["--preset", "fast"], "--preset"),
    "bad-jitter": (["--jitter", "strong"], "--jitter"),
}


@pytest.mark.parametrize("case", list(OPTION_FAULTS))
def test_train_options_are_checked_before_any_work(case, workspace, tmp_path, capsys):
    extra, named = OPTION_FAULTS[case]
    root = _copy(workspace, tmp_path, "set", "base")
    try:
        _refused(_train(root, *extra), capsys, root, (named,))
    except SystemExit as exit_:  # argparse's own refusal of a malformed value: status 2 and a usage line
        assert exit_.code == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err
    assert not (root / "out" / "adapter_model.safetensors").exists()


def test_unknown_dataset_option_is_refused(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base")
    argv = ["train", "--base", str(root / "base"), "--dataset", "folder", "--data-root", str(root / "set"),
            "--dataset-option", "bogus=1", "--max-steps", "1", "--output-dir", str(root / "out"), "--quiet",
            "--log-with", "none"]  # fmt: skip
    _refused(argv, capsys, root, ("bogus",))


# -- output folders (#15.2) ------------------------------------------------------------------------------------------
def test_train_into_another_adapter_is_refused(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    argv = _train(root)
    argv[argv.index("--output-dir") + 1] = str(root / "adapter")
    _refused(argv, capsys, root, (str(root / "adapter"),))


# -- damaged files (#15.5) -------------------------------------------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 64,
                      "json-garbage": b"{not json"}[how])  # fmt: skip


ADAPTER_FAULTS = {
    "weights-empty": ("adapter_model.safetensors", "empty"),
    "weights-truncated": ("adapter_model.safetensors", "truncated"),
    "weights-garbage": ("adapter_model.safetensors", "garbage"),
    "config-garbage": ("adapter_config.json", "json-garbage"),
}


@pytest.mark.parametrize("case", list(ADAPTER_FAULTS))
def test_damaged_adapter_is_one_error_naming_the_file(case, workspace, tmp_path, capsys):
    name, how = ADAPTER_FAULTS[case]
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    _damage(root / "adapter" / name, how)
    argv = ["evaluate", "--adapter", str(root / "adapter"), "--base", str(root / "base"), "--images",
            str(root / "set/images"), "--masks", str(root / "set/masks"), "--output-dir", str(root / "eval"),
            "--quiet"]  # fmt: skip
    _refused(argv, capsys, root, (name,))


def test_base_checkpoint_given_as_adapter(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base")
    argv = ["evaluate", "--adapter", str(root / "base"), "--images", str(root / "set/images"), "--masks",
            str(root / "set/masks"), "--output-dir", str(root / "eval"), "--quiet"]  # fmt: skip
    _refused(argv, capsys, root, (str(root / "base"),))


def test_adapter_for_another_encoder_size(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "wide-base", "adapter")
    argv = ["evaluate", "--adapter", str(root / "adapter"), "--base", str(root / "wide-base"), "--images",
            str(root / "set/images"), "--masks", str(root / "set/masks"), "--output-dir", str(root / "eval"),
            "--quiet"]  # fmt: skip
    line = _refused(argv, capsys, root, (str(root / "adapter"),))
    assert "hidden size 32" in line and "64" in line


def test_labels_in_the_config_disagreeing_with_the_weights(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    config_path = root / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = {"0": "background", "1": "vessel", "2": "lesion"}
    config["num_labels"] = 3
    config_path.write_text(json.dumps(config))
    argv = ["evaluate", "--adapter", str(root / "adapter"), "--base", str(root / "base"), "--images",
            str(root / "set/images"), "--masks", str(root / "set/masks"), "--output-dir", str(root / "eval"),
            "--quiet"]  # fmt: skip
    line = _refused(argv, capsys, root, ("adapter_config.json",))
    assert "3 classes" in line and "head for 2" in line


@pytest.mark.parametrize("damage", ["state.json:json-garbage", "state.safetensors:truncated",
                                    "state.safetensors:empty"])  # fmt: skip
def test_damaged_resume_checkpoint(damage, workspace, tmp_path, capsys):
    name, how = damage.split(":")
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    _damage(root / "adapter" / "checkpoint" / name, how)
    argv = _train(root, "--resume-from", str(root / "adapter" / "checkpoint"))
    argv[argv.index("--output-dir") + 1] = str(root / "adapter")
    _refused(argv, capsys, root, (name,))


def test_evaluate_never_unpickles_a_baseline_bin(workspace, tmp_path, capsys, monkeypatch):
    root = _copy(workspace, tmp_path, "set", "base")
    full = root / "full"
    shutil.copytree(root / "base", full)
    (full / "model.safetensors").unlink()
    (full / "pytorch_model.bin").write_bytes(b"not a pickle, and it must never be opened as one")
    (full / "losam_method.json").write_text(json.dumps({"method": "full", "id2label": {"0": "bg", "1": "fg"}}))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    argv = ["evaluate", "--adapter", str(full), "--images", str(root / "set/images"), "--masks",
            str(root / "set/masks"), "--output-dir", str(root / "eval"), "--quiet"]  # fmt: skip
    _refused(argv, capsys, root, (str(full),))


# -- data convert never deletes its input (#15.1) --------------------------------------------------------------------
@pytest.mark.parametrize("target", ["root", "parent", "inside", "plain-file"])
def test_data_convert_never_replaces_its_input(target, workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set")
    (root / "unrelated.txt").write_text("keep me")
    (root / "set" / "file.txt").write_text("a plain file")
    out = {"root": root / "set", "parent": root, "inside": root / "set" / "images",
           "plain-file": root / "set" / "file.txt"}[target]  # fmt: skip
    argv = ["data", "convert", "--dataset", "folder", "--data-root", str(root / "set"), "--output-dir", str(out),
            "--overwrite"]  # fmt: skip
    _refused(argv, capsys, root, (str(out), str(root / "set")))


# -- predict (#15.2, #15.4, #15.6) -----------------------------------------------------------------------------------
def _predict(root: Path, *extra: str) -> list[str]:
    return ["predict", "--adapter", str(root / "adapter"), "--base", str(root / "base"), "--input",
            str(root / "set/images"), "--output-dir", str(root / "preds"), "--quiet", "--num-workers", "0",
            *extra]  # fmt: skip


PREDICT_OPTION_FAULTS = {
    "overlap-without-tile": (["--overlap", "0.5"], "--overlap"),
    "tile-too-small": (["--tile", "8"], "--tile"),
    "overlap-one": (["--tile", "32", "--overlap", "1"], "--overlap"),
    "batch-size-zero": (["--batch-size", "0"], "--batch-size"),
    "shard-size-without-dataset-output": (["--shard-size", "4"], "--shard-size"),
}


@pytest.mark.parametrize("case", list(PREDICT_OPTION_FAULTS))
def test_predict_options_are_checked_before_any_work(case, workspace, tmp_path, capsys):
    extra, named = PREDICT_OPTION_FAULTS[case]
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    try:
        _refused(_predict(root, *extra), capsys, root, (named,))
    except SystemExit as exit_:
        assert exit_.code == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err
    assert not (root / "preds" / "masks").exists()


def test_predict_resume_with_another_adapter_is_refused(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    assert cli_main(_predict(root)) == 0
    shutil.copytree(root / "adapter", root / "other")
    with torch.no_grad():  # another adapter: one weight changed
        from safetensors.torch import load_file, save_file

        weights = load_file(root / "other" / "adapter_model.safetensors")
        first = sorted(weights)[0]
        weights[first] = weights[first] + 1
        save_file(weights, root / "other" / "adapter_model.safetensors")
    argv = _predict(root, "--resume")
    argv[argv.index("--adapter") + 1] = str(root / "other")
    _refused(argv, capsys, root, ("predict_settings.json", str(root / "preds")))


def test_predict_into_a_foreign_folder_or_over_its_own_outputs_is_refused(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    (root / "preds").mkdir()
    (root / "preds" / "notes.txt").write_text("someone's notes")
    _refused(_predict(root), capsys, root, (str(root / "preds"),))
    (root / "preds" / "notes.txt").unlink()
    assert cli_main(_predict(root)) == 0
    _refused(_predict(root), capsys, root, ("--resume", "--overwrite"))  # its own earlier outputs: say which


def test_predict_output_inside_its_input_is_refused(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    argv = _predict(root)
    argv[argv.index("--output-dir") + 1] = str(root / "set" / "images" / "preds")
    _refused(argv, capsys, root, (str(root / "set" / "images"),))


def _gzip_bomb(path: Path) -> None:
    """A 16x16 PNG followed by 64 MiB of zeros: a file of a few hundred KB that inflates far past its image."""
    import gzip
    import io

    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, format="PNG")
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(png.getvalue())
        for _ in range(4):
            fh.write(bytes(16 << 20))


def test_train_on_a_gzip_bomb_is_refused_naming_it(workspace, tmp_path, capsys):
    root = _copy(workspace, tmp_path, "set", "base")
    _gzip_bomb(root / "set" / "bomb.png.gz")
    argv = _train(root)
    argv[argv.index("--train-image") + 1] = str(root / "set" / "bomb.png.gz")
    _refused(argv, capsys, root, ("bomb.png.gz",))


def test_predict_carries_on_past_bad_inputs_exits_1_and_names_them(workspace, tmp_path, capsys):
    """Bad inputs are not a refusal: the run goes on, says how many failed, exits 1, and names each in summary.csv."""
    import csv

    root = _copy(workspace, tmp_path, "set", "base", "adapter")
    _gzip_bomb(root / "set" / "images" / "bomb.png.gz")
    (root / "set" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    before = _hashes(root)
    code = cli_main(_predict(root))
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    assert "2 of 4 input(s) could not be segmented" in err
    with open(root / "preds" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    text = (root / "preds" / "summary.csv").read_text()
    assert len(rows) == 4 and "bomb.png.gz" in text and "broken.png" in text
    assert {k: v for k, v in _hashes(root).items() if k in before} == before
