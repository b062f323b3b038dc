"""Bad input through ``losam``: exit status 2, one ``error:`` line naming the file or option, and no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from losam_peft.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, saved_adapter):
    adapter, base = saved_adapter
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(adapter, root / "adapter")
    shutil.copytree(base, root / "base")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(((rng.random((40, 48)) > 0.7) * 255).astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    (root / "a_file").write_text("not a folder")
    return root


def _copy_adapter(workspace, tmp_path, change):
    folder = tmp_path / "broken"
    shutil.copytree(workspace / "adapter", folder)
    change(folder)
    return folder


def _list_config(folder):
    (folder / "adapter_config.json").write_text("[1, 2, 3]")


def _zero_image_size(folder):
    path = folder / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data["image_size"] = 0
    path.write_text(json.dumps(data))


def _predict(workspace, tmp_path, *extra, adapter=None):
    return ["predict", "--adapter", str(adapter or workspace / "adapter"), "--input", str(workspace / "images"),
            "--output-dir", str(tmp_path / "out"), "--quiet", *extra]  # fmt: skip


def _train(workspace, tmp_path, *extra, output=None):
    return ["train", "--base", str(workspace / "base"), "--train-image", str(workspace / "images" / "im0.png"),
            "--train-mask", str(workspace / "masks" / "im0.png"), "--output-dir", str(output or tmp_path / "run"),
            "--max-steps", "1", "--quiet", "--log-with", "none", *extra]  # fmt: skip


CASES = {
    "tile 0": (lambda w, t: _predict(w, t, "--tile", "0"), "--tile"),
    "dtype int8": (lambda w, t: _predict(w, t, "--dtype", "int8"), "int8"),
    "device bogus": (lambda w, t: _predict(w, t, "--device", "bogus"), "bogus"),
    "overlap 1.5": (lambda w, t: _predict(w, t, "--tile", "32", "--overlap", "1.5"), "--overlap"),
    "overlap nan": (lambda w, t: _predict(w, t, "--tile", "32", "--overlap", "nan"), "--overlap"),
    "overlap without tile": (lambda w, t: _predict(w, t, "--overlap", "0.5"), "--overlap"),
    "predict batch 0": (lambda w, t: _predict(w, t, "--batch-size", "0"), "--batch-size"),
    "adapter config is a list": (
        lambda w, t: _predict(w, t, adapter=_copy_adapter(w, t, _list_config)), "adapter_config.json"),
    "preprocessor image_size 0": (
        lambda w, t: _predict(w, t, adapter=_copy_adapter(w, t, _zero_image_size)), "preprocessor_config.json"),
    "base folder holding an adapter": (lambda w, t: _predict(w, t, "--base", str(w / "adapter")), "adapter"),
    "convert unknown dataset": (
        lambda w, t: ["data", "convert", "--dataset", "nosuch", "--data-root", str(w), "--output-dir", str(t / "o")],
        "nosuch"),
    "convert onto an existing output": (
        lambda w, t: ["data", "convert", "--dataset", "folder", "--data-root", str(w), "--output-dir", str(w / "images")],
        "lies inside the input"),
    "list-adapters limit 0": (lambda w, t: ["list-adapters", "--limit", "0"], "--limit"),
    "train output is a file": (lambda w, t: _train(w, t, output=w / "a_file"), "a_file"),
    "train output under a file": (lambda w, t: _train(w, t, output=w / "a_file" / "run"), "a_file"),
    "evaluate output is a file": (
        lambda w, t: ["evaluate", "--adapter", str(w / "adapter"), "--images", str(w / "images"), "--masks",
                      str(w / "masks"), "--output-dir", str(w / "a_file"), "--quiet"], "a_file"),  # fmt: skip
    "train batch 0": (lambda w, t: _train(w, t, "--batch-size", "0"), "--batch-size"),
    "train seed -1": (lambda w, t: _train(w, t, "--seed", "-1"), "--seed"),
    "train epochs 0": (lambda w, t: _train(w, t, "--epochs", "0"), "--epochs"),
    "train log-with bogus": (lambda w, t: _train(w, t, "--log-with", "bogus"), "bogus"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_exit_2(case, workspace, tmp_path, capsys):
    build, needle = CASES[case]
    argv = build(workspace, tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusal of a malformed option
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert "Traceback" not in err


def test_cuda_without_cuda_is_an_error(workspace, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(_predict(workspace, tmp_path, "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "cuda" in err.lower() and "Traceback" not in err


def test_hub_commands_without_network_are_errors(workspace, monkeypatch, capsys):
    # the HTTP client's connection errors are not OSError; both commands must still end in one error line
    import huggingface_hub

    connect_error = type("ConnectError", (Exception,), {"__module__": "httpx"})

    def unreachable(*args, **kwargs):
        raise connect_error("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_models", unreachable)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    assert main(["list-adapters"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hub" in err and "Traceback" not in err
    assert main(["push", "--adapter", str(workspace / "adapter"), "--repo-id", "someone/adapter",
                 "--base-repo-id", "facebook/sam-vit-base"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hub" in err and "Traceback" not in err


def test_the_entry_point_exits_2_without_a_traceback(workspace, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "losam_peft.cli", *_predict(workspace, tmp_path, "--dtype", "int8")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.strip().splitlines()[-1].startswith("error:")
    assert sum("error:" in line for line in run.stderr.splitlines()) == 1


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0.05)" in out and "(default: facebook/sam-vit-base)" in out and "(default: 0.9)" in out
