"""`losam compare`: LoSAM, head-only, LoRA and full fine-tuning through the same training loop, on the same shots."""

import json

import pytest
import torch
from helpers import tiny_config, tiny_model
from peft import PeftModel

from losam_peft import SamForSemanticSegmentation
from losam_peft.compare import METHODS, MethodOptions, load_method_model, prepare_method
from losam_peft.training import TrainingConfig


def _config(**kwargs):
    return TrainingConfig(
        output_dir="unused", base="unused", id2label={0: "background", 1: "vessel"}, max_steps=1, **kwargs
    )


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_each_method_trains_what_it_says():
    config = _config()
    head = prepare_method("head", tiny_model(), config)
    assert _trainable(head) == {n for n, _ in head.named_parameters() if n.startswith("segmentation_head.")}

    full = prepare_method("full", tiny_model(), config)
    assert _trainable(full) == {n for n, _ in full.named_parameters()}

    lora = prepare_method("lora", tiny_model(), config, MethodOptions(lora_rank=4))
    assert isinstance(lora, PeftModel)
    trainable = _trainable(lora)
    assert trainable and all(("qkv.lora_" in n) or ("segmentation_head.modules_to_save" in n) for n in trainable)
    assert any(".attn.qkv.lora_A." in n for n in trainable) and not any(".proj.lora_" in n for n in trainable)
    assert lora.peft_config["default"].r == 4

    losam = prepare_method("losam", tiny_model(), config)
    assert any("losam_prompt" in n for n in _trainable(losam))
    assert not any(n.startswith("base_model.model.vision_encoder.") and "losam_" not in n for n in _trainable(losam))
    with pytest.raises(ValueError, match="unknown method 'adapterx'"):
        prepare_method("adapterx", tiny_model(), config)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from losam_peft.cli import main
    from losam_peft.data.synthetic import make_samples, save_folder

    root = tmp_path_factory.mktemp("compare")
    tiny_model().save_pretrained(root / "base")
    shots = make_samples("fundus", 1, size=40, seed=11)
    save_folder(shots, root / "train")
    save_folder(make_samples("fundus", 2, size=40, seed=12), root / "eval")
    name = shots[0].id
    code = main([
        "compare", "--base", str(root / "base"),
        "--train-image", str(root / "train" / "images" / f"{name}.png"),
        "--train-mask", str(root / "train" / "masks" / f"{name}.png"),
        "--eval-dir", str(root / "eval"), "--output-dir", str(root / "out"),
        "--max-steps", "1", "--image-size", "64", "--log-with", "none", "--device", "cpu", "--dtype", "fp32", "--quiet",
    ])  # fmt: skip
    return root, code


def test_cli_compare_trains_all_four_methods_on_the_same_shots(compared, capsys):
    root, code = compared
    assert code == 0
    comparison = json.loads((root / "out" / "compare.json").read_text())
    rows = {r["method"]: r for r in comparison["methods"]}
    assert list(rows) == list(METHODS)
    assert all(r["status"] == "ok" and r["steps"] == 1 for r in rows.values()), rows
    assert comparison["train_ids"] == ["fundus_11_0000"] and len(comparison["eval_ids"]) == 2
    for method, row in rows.items():
        assert 0.0 <= row["dice"] <= 1.0
        assert row["file_bytes"] > 0 and row["train_seconds"] > 0
        assert json.loads((root / "out" / method / "train_config.json").read_text())["train_ids"] == ["fundus_11_0000"]

    base = SamForSemanticSegmentation(tiny_config())
    head_params = sum(p.numel() for p in base.segmentation_head.parameters())
    all_params = sum(p.numel() for p in base.parameters())
    assert rows["head"]["trainable_parameters"] == head_params
    assert rows["full"]["trainable_parameters"] == all_params == rows["full"]["total_parameters"]
    assert head_params < rows["lora"]["trainable_parameters"] < all_params
    assert head_params < rows["losam"]["trainable_parameters"] < all_params
    assert rows["head"]["file_bytes"] < rows["losam"]["file_bytes"] < rows["full"]["file_bytes"]
    assert rows["head"]["files"] == ["head_model.safetensors"] and rows["full"]["files"] == ["model.safetensors"]
    assert rows["lora"]["files"] == rows["losam"]["files"] == ["adapter_model.safetensors"]
    csv_text = (root / "out" / "compare.csv").read_text()
    assert csv_text.startswith("method,title,status,dice,trainable_parameters")
    assert "| Method | Dice (%) | Trainable params | Adapter file | Training time (s) |" in comparison["table"]
    capsys.readouterr()


def test_compared_models_reload_and_head_only_keeps_sam_frozen(compared, capsys):
    from losam_peft.cli import main

    root, _ = compared
    original = SamForSemanticSegmentation.from_pretrained(root / "base")
    head = load_method_model(root / "out" / "head")
    for (name, a), b in zip(original.vision_encoder.state_dict().items(), head.vision_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    full = load_method_model(root / "out" / "full")
    assert any(
        not torch.equal(a, b) for a, b in zip(original.vision_encoder.parameters(), full.vision_encoder.parameters())
    )
    assert isinstance(load_method_model(root / "out" / "lora"), PeftModel)

    # every method's folder evaluates with `losam evaluate` and gives the Dice the comparison reported
    rows = {r["method"]: r for r in json.loads((root / "out" / "compare.json").read_text())["methods"]}
    for method in ("lora", "losam"):
        out = root / f"eval-{method}"
        assert main(["evaluate", "--adapter", str(root / "out" / method), "--images", str(root / "eval" / "images"),
                     "--masks", str(root / "eval" / "masks"), "--output-dir", str(out), "--device", "cpu",
                     "--dtype", "fp32", "--quiet"]) == 0  # fmt: skip
        results = json.loads((out / "results.json").read_text())
        assert results["mean_foreground"]["dataset"]["dice"] == pytest.approx(rows[method]["dice"])
    capsys.readouterr()


def test_compare_needs_evaluation_data(tmp_path, capsys):
    from losam_peft.cli import main
    from losam_peft.data.synthetic import make_samples, save_folder

    save_folder(make_samples("fundus", 1, size=32, seed=0), tmp_path / "train")
    code = main(["compare", "--base", str(tmp_path), "--train-dir", str(tmp_path / "train"),
                 "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "needs evaluation data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--base", "x", "--output-dir", "y", "--methods", "losam,prefix"])


def test_lora_targets_default_to_the_base_s_attention_projections():
    from helpers import tiny_model

    from losam_peft.baselines import default_lora_targets

    assert default_lora_targets(tiny_model()) == ["qkv"]
    from losam_peft import Dinov2ForLoSamSegmentation
    from losam_peft.configuration_losam_backbones import LoSamDinov2SegmentationConfig

    config = LoSamDinov2SegmentationConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, image_size=28, patch_size=14, num_labels=2)  # fmt: skip
    assert default_lora_targets(Dinov2ForLoSamSegmentation(config)) == ["q_proj", "v_proj"]
