"""`losam demo`, the package's main job on its embedded default (issue 3)."""

import json

import pytest

from losam_peft.cli import main as cli_main


@pytest.mark.slow
def test_demo_trains_a_useful_adapter_and_writes_everything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["demo", "--output-dir", "demo", "--quiet"]) == 0  # relative, as README's command gives it
    out = tmp_path / "demo"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["held_out_dice"] >= 0.6
    assert summary["held_out_dice"] > summary["untrained_head_dice"] + 0.3
    for name in ["adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "loss_curve.png"]:
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 6

    from losam_peft import LoSamPipeline

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the adapter names its base by an absolute path: it loads from any directory
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out / "base-encoder")
    pipe = LoSamPipeline.from_pretrained(out)  # the base named by the adapter is the demo's saved encoder
    from losam_peft.data.synthetic import fundus

    result = pipe(fundus(256, 123).image)
    assert result.label_map.shape == (256, 256)
