"""examples/reproduce_paper.py end to end: synthetic stand-ins and the real loaders on fixture trees, tiny encoder."""

import importlib.util
import json
import re
import sys

import pytest
from helpers import REPO, tiny_model


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", REPO / "examples" / "reproduce_paper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "sam"
    tiny_model().save_pretrained(path)
    return path


def test_paper_numbers_are_those_of_the_reference(script):
    reference = (REPO.parent / "shared" / "REFERENCE.md").read_text() if (REPO.parent / "shared").is_dir() else ""
    table1, table2 = script.PAPER_TABLE1, script.PAPER_TABLE2
    dice = {
        "FIVES vessels Dice": table1["fives"]["vessel"]["dice"],
        "ROSE-1 OCTA vessels Dice": table1["rose1"]["vessel"]["dice"],
        "ARoI OCT layers Dice": table1["aroi"]["mean (foreground)"]["dice"],
        "HE": table1["idrid"]["haemorrhage"]["dice"],
        "EX": table1["idrid"]["hard exudate"]["dice"],
        "HRF Dice": table2["hrf"]["vessel"]["dice"],
        "CHASEDB": table2["chase_db1"]["vessel"]["dice"],
        "ROSE-2": table2["rose2"]["vessel"]["dice"],
        "OCTA-3M": table2["octa500_3m"]["vessel"]["dice"],
        "OCTA-6M": table2["octa500_6m"]["vessel"]["dice"],
    }
    assert dice == {
        "FIVES vessels Dice": 80.90, "ROSE-1 OCTA vessels Dice": 59.01, "ARoI OCT layers Dice": 35.68, "HE": 39.54,
        "EX": 62.96, "HRF Dice": 69.16, "CHASEDB": 76.37, "ROSE-2": 23.33, "OCTA-3M": 54.10, "OCTA-6M": 55.28,
    }  # fmt: skip
    if reference:
        for text, value in dice.items():
            assert f"{value:.2f}" in reference, text


def test_synthetic_protocol_runs_end_to_end(script, base, tmp_path, capsys):
    out = tmp_path / "run"
    code = script.main([
        "--synthetic", "--base", str(base), "--image-size", "64", "--synthetic-size", "40", "--synthetic-train", "2",
        "--synthetic-images", "1", "--max-steps", "1", "--shot-seed", "3", "--output-dir", str(out), "--quiet",
        "--device", "cpu", "--dtype", "fp32",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Table 1: one-shot" in printed and "Table 2: zero-shot" in printed
    assert "| Dataset | Class | Dice paper | Dice measured |" in printed
    report = json.loads((out / "reproduce_paper.json").read_text())
    assert (out / "reproduce_paper.md").read_text() == report["markdown"]

    one = report["one_shot"]
    assert {k: one[k]["status"] for k in one} == {"fives": "ok", "rose1": "ok", "aroi": "ok", "idrid": "skipped"}
    assert "not synthesised" in one["idrid"]["reason"]
    for key in ("fives", "rose1", "aroi"):
        assert len(one[key]["train_ids"]) == 1 and one[key]["train_ids"][0].startswith(f"{key}_train_")
        assert one[key]["steps"] == 1
        adapter = json.loads((out / "adapters" / key / "train_config.json").read_text())
        assert adapter["train_ids"] == one[key]["train_ids"] and adapter["preset"] == "paper"
    zero = report["zero_shot"]
    assert all(e["status"] == "ok" for e in zero.values()), zero
    assert zero["hrf"]["train_ids"] == one["fives"]["train_ids"] and zero["octa500_6m"]["trained_on"] == "rose1"

    rows = {(r["key"], r["class"]): r for r in report["table1"] + report["table2"]}
    fives = rows[("fives", "vessel")]
    assert fives["paper"]["dice"] == 80.90 and 0 <= fives["measured"]["dice"] <= 100
    assert rows[("aroi", "mean (foreground)")]["measured"]["dice"] is not None
    assert rows[("idrid", "haemorrhage")]["measured"] is None
    assert len(report["table2"]) == 5 and all(r["measured"] is not None for r in report["table2"])
    assert re.search(r"\| FIVES \| vessel \| 80\.90 \| \d+\.\d\d \|", printed)
    assert (out / "evaluation" / "octa500_3m" / "results.json").is_file()


def test_real_loaders_with_missing_datasets_skipped(script, base, tmp_path, capsys):
    from fixtures_datasets import make_fives, make_hrf

    fives = make_fives(tmp_path / "FIVES")
    hrf = make_hrf(tmp_path / "HRF")
    out = tmp_path / "run"
    code = script.main([
        "--base", str(base), "--fives", str(fives["root"]), "--hrf", str(hrf["root"]), "--image-size", "64",
        "--max-steps", "1", "--output-dir", str(out), "--quiet", "--device", "cpu", "--dtype", "fp32",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "reproduce_paper.json").read_text())
    one, zero = report["one_shot"], report["zero_shot"]
    assert one["fives"]["status"] == "ok" and one["fives"]["train_ids"][0].endswith(("1_A", "2_D", "3_N"))
    assert one["fives"]["num_test_images"] == fives["splits"]["test"]
    assert one["rose1"] == {"dataset": "ROSE-1", "status": "skipped", "reason": "no --rose1 root given"}
    assert zero["hrf"]["status"] == "ok" and zero["hrf"]["num_test_images"] == hrf["count"]
    assert zero["chase_db1"]["status"] == "skipped" and "--chase-db1" in zero["chase_db1"]["reason"]
    assert zero["rose2"]["status"] == "skipped" and "ROSE-1 adapter" in zero["rose2"]["reason"]
    results = json.loads((out / "evaluation" / "hrf" / "results.json").read_text())
    assert results["evaluation"]["images_with_fov"] == hrf["count"]  # HRF's FOV masks restrict the metrics
    printed = capsys.readouterr().out
    assert "skipped: no --rose1 root given" in printed


def test_aroi_is_evaluated_on_other_patients(script):
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["p1_a", "p1_b", "p2_a", "p3_a"], "patient": ["1", "1", "2", "3"]})
    held_out, note = script._held_out(ds, ["p1_a"])
    assert held_out["id"] == ["p2_a", "p3_a"] and "patient" in note
    held_out, _ = script._held_out(ds.remove_columns("patient"), ["p1_a"])
    assert held_out["id"] == ["p1_b", "p2_a", "p3_a"]
