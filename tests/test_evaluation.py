"""`losam evaluate` and evaluate_adapter: metrics against brute force at the original resolution, FOV, outputs, bad input."""

import csv
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model
from peft import get_peft_model

from losam_peft import LoSamConfig, LoSamImageProcessor
from losam_peft.adapters import save_adapter
from losam_peft.data.io import DataError
from losam_peft.data.samples import Sample
from losam_peft.evaluation import LabelMismatchError, check_labels, evaluate_adapter
from losam_peft.pipeline import LoSamPipeline

VESSEL = {0: "background", 1: "vessel"}


def _randomise(model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if ("losam_" in name or "segmentation_head" in name) and tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)
                if "running_var" in name:
                    tensor.abs_()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base = root / "base"
    tiny_model().save_pretrained(base)
    torch.manual_seed(1)
    model = get_peft_model(tiny_model(), LoSamConfig(id2label=VESSEL, modality="fundus", task="vessels"))
    model.peft_config["default"].base_model_name_or_path = str(base)
    _randomise(model)
    save_adapter(model, root / "adapter", image_processor=LoSamImageProcessor(image_size=64))
    return root / "adapter"


@pytest.fixture(scope="module")
def pipe(adapter):
    return LoSamPipeline.from_pretrained(adapter, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from losam_peft.data.synthetic import make_samples, save_folder

    root = tmp_path_factory.mktemp("synthetic")
    save_folder(make_samples("fundus", 3, size=40, seed=7), root, write_fov=True)
    return root


def _samples():
    rng = np.random.default_rng(0)
    samples = []
    for index, (h, w) in enumerate(((40, 52), (33, 33), (70, 45))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = (rng.random((h, w)) < 0.3).astype(np.uint8)
        label[0, :5] = 255  # ignored pixels
        yy, xx = np.mgrid[:h, :w]
        fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
        samples.append(Sample(image, label, f"img{index}", fov if index != 1 else None))
    return samples


def _reference_prediction(pipe, image):
    """The label map at the image's own size, computed by hand: crop the padding, bilinear resize, argmax."""
    processor = pipe.image_processor
    with torch.no_grad():
        logits = pipe.model(pixel_values=processor.preprocess([image])["pixel_values"]).logits[0]
    h, w = image.shape[:2]
    ch, cw = processor.resized_size(h, w)
    scale = logits.shape[-1] / processor.image_size
    cropped = logits[:, : round(ch * scale), : round(cw * scale)]
    return F.interpolate(cropped[None], size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def _brute_force(pred, ref, fov, c):
    tp = fp = fn = tn = 0
    for p, r, inside in zip(pred.ravel(), ref.ravel(), fov.ravel()):
        if r == 255 or not inside:
            continue
        if p == c and r == c:
            tp += 1
        elif p == c:
            fp += 1
        elif r == c:
            fn += 1
        else:
            tn += 1
    return tp, fp, fn, tn


def test_metrics_match_brute_force_at_the_original_resolution(pipe, tmp_path):
    samples = _samples()
    results = evaluate_adapter(pipe, samples, VESSEL, tmp_path / "out", progress=False, num_overlays=1)
    totals = np.zeros(4, dtype=np.int64)
    for sample, entry in zip(samples, results["per_image"]):
        pred = _reference_prediction(pipe, sample.image)
        assert pred.shape == sample.label.shape
        fov = sample.fov if sample.fov is not None else np.ones_like(sample.label, dtype=bool)
        counts = np.array(_brute_force(pred, sample.label, fov, 1))
        totals += counts
        assert entry["id"] == sample.id
        assert [entry["per_class"][1][k] for k in ("tp", "fp", "fn", "tn")] == counts.tolist()
    tp, fp, fn, tn = totals
    vessel = results["per_class"][1]
    assert vessel["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert vessel["recall"] == pytest.approx(tp / (tp + fn))
    assert vessel["precision"] == pytest.approx(tp / (tp + fp))
    assert vessel["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert vessel["bm"] == pytest.approx(tp / (tp + fn) + tn / (tn + fp) - 1)
    assert results["evaluation"]["images_with_fov"] == 2 and results["evaluation"]["num_images"] == 3

    # the files: atomic, complete, readable
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["evaluation"]["image_ids"] == ["img0", "img1", "img2"]
    assert saved["per_class"]["1"]["dice"] == pytest.approx(vessel["dice"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    dataset_vessel = next(r for r in rows if r["level"] == "dataset" and r["class"] == "vessel")
    assert float(dataset_vessel["dice"]) == pytest.approx(vessel["dice"])
    per_image = list(csv.DictReader((out / "per_image.csv").open()))
    assert {r["image"] for r in per_image} == {"img0", "img1", "img2"}
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 2 and overlays[0].startswith("best_01_") and overlays[1].startswith("worst_01_")
    assert (out / "dice_per_image.png").stat().st_size > 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left behind

    # the evaluate module computes the same numbers from the same label maps
    import evaluate

    from losam_peft.metrics import EVALUATE_METRIC_PATH

    metric = evaluate.load(EVALUATE_METRIC_PATH)
    preds = [_reference_prediction(pipe, s.image) for s in samples]
    fovs = [s.fov if s.fov is not None else np.ones_like(s.label, dtype=bool) for s in samples]
    loaded = metric.compute(predictions=preds, references=[s.label for s in samples], fov=fovs, num_labels=2)
    assert loaded["dice_1"] == pytest.approx(vessel["dice"])  # flat, like evaluate's own metrics


def test_no_fov_evaluates_every_pixel(pipe):
    samples = _samples()[:1]
    with_fov = evaluate_adapter(pipe, samples, VESSEL, progress=False)
    without = evaluate_adapter(pipe, samples, VESSEL, progress=False, use_fov=False)
    assert without["num_pixels"] == samples[0].label.size - 5 > with_fov["num_pixels"]
    assert without["evaluation"]["images_with_fov"] == 0 and without["outputs"] == {}


def test_cli_evaluate_folder(adapter, folder, tmp_path, capsys):
    from losam_peft.cli import main

    out = tmp_path / "out"
    code = main([
        "evaluate", "--adapter", str(adapter), "--images", str(folder / "images"), "--masks", str(folder / "masks"),
        "--output-dir", str(out), "--device", "cpu", "--dtype", "fp32", "--max-images", "2", "--quiet",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Class | Dice | REC | BM | P | IoU |" in printed and "| vessel |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"]["num_images"] == 2
    assert {"results.csv", "per_image.csv", "dice_per_image.png", "overlays"} <= {p.name for p in out.iterdir()}


def test_cli_evaluate_dataset_uses_the_test_split_and_fov(adapter, tmp_path, capsys):
    from fixtures_datasets import make_fives

    from losam_peft.cli import main

    info = make_fives(tmp_path / "fives")
    base_args = ["evaluate", "--adapter", str(adapter), "--dataset", "fives", "--data-root", str(info["root"]),
                 "--device", "cpu", "--dtype", "fp32", "--quiet"]  # fmt: skip
    assert main([*base_args, "--output-dir", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["evaluation"]["dataset"] == "fives (test)"
    assert results["evaluation"]["num_images"] == info["splits"]["test"]
    assert results["evaluation"]["images_with_fov"] == info["splits"]["test"]
    assert main([*base_args, "--output-dir", str(tmp_path / "b"), "--no-fov", "--split", "train"]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["evaluation"]["num_images"] == info["splits"]["train"]
    assert results["evaluation"]["images_with_fov"] == 0
    assert results["num_pixels"] == sum(20 * 24 for _ in range(info["splits"]["train"]))
    capsys.readouterr()
    assert main([*base_args, "--output-dir", str(tmp_path / "c"), "--dataset-option", "subset=DVC"]) == 2
    assert "unknown option(s) ['subset']" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_labels_with_another_number_of_classes_are_refused_naming_both(adapter, tmp_path, capsys):
    from losam_peft.cli import main
    from losam_peft.data.synthetic import make_samples, save_folder

    root = tmp_path / "oct"
    save_folder(make_samples("oct", 1, size=32, seed=0, num_layers=3), root)
    code = main(["evaluate", "--adapter", str(adapter), "--images", str(root / "images"), "--masks", str(root / "masks"),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "predicts 2 classes" in err and "4 classes" in err and "vessel" in err and "RNFL" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_label_names_that_differ_only_warn(pipe):
    with pytest.warns(UserWarning, match="different names"):
        results = evaluate_adapter(pipe, _samples()[:1], {0: "background", 1: "artery"}, progress=False)
    assert results["evaluation"]["label_warnings"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # generic folder names are not worth a warning
        assert check_labels(VESSEL, {0: "background", 1: "foreground"}) == []
    with pytest.raises(LabelMismatchError, match="3 classes"):
        check_labels(VESSEL, {0: "background", 1: "a", 2: "b"})


def test_reference_class_outside_the_adapter_is_refused(pipe):
    sample = _samples()[0]
    sample.label[3, 3] = 4
    with pytest.raises(LabelMismatchError, match=r"class ids \[4\].*2 classes"):
        evaluate_adapter(pipe, [sample], None, progress=False)


def test_empty_dataset_names_both_sides(pipe):
    with pytest.raises(DataError, match=r"nothing to evaluate: my set holds no images .*adapter"):
        evaluate_adapter(pipe, [], VESSEL, progress=False, dataset_name="my set")


class _WrongSizePipeline:
    id2label = VESSEL
    adapter = "stub-adapter"

    def predict_loaded(self, images, batch_size=1):
        from losam_peft.pipeline import SegmentationResult

        return [SegmentationResult(np.zeros((5, 6), np.uint8), dict(VESSEL)) for _ in images]


def test_predictions_of_another_shape_are_refused_naming_both():
    with pytest.raises(
        DataError, match=r"prediction of the adapter stub-adapter is 6x5 pixels but the reference mask is 52x40"
    ):
        evaluate_adapter(_WrongSizePipeline(), _samples()[:1], VESSEL, progress=False)


def test_a_second_run_leaves_no_overlays_of_the_first(pipe, tmp_path):
    samples = _samples()
    evaluate_adapter(pipe, samples, VESSEL, tmp_path / "out", progress=False, num_overlays=3)
    evaluate_adapter(pipe, samples[:1], VESSEL, tmp_path / "out", progress=False, num_overlays=1)
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert len(overlays) == 2, overlays


def test_skip_bad_records_the_skipped_files_in_results_json(tmp_path, saved_adapter, capsys):
    import json

    import numpy as np
    from PIL import Image

    from losam_peft.cli import main as cli_main

    adapter, base = saved_adapter
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = cli_main(["evaluate", "--adapter", str(adapter), "--base", str(base), "--images", str(tmp_path / "images"),
                     "--masks", str(tmp_path / "masks"), "--output-dir", str(tmp_path / "out"), "--skip-bad",
                     "--quiet"])  # fmt: skip
    assert code == 0
    assert "skipped 1 unusable image" in capsys.readouterr().out
    info = json.loads((tmp_path / "out" / "results.json").read_text())["evaluation"]
    assert info["num_images"] == 1
    assert [entry["id"] for entry in info["skipped"]] == ["b"]
    assert "b.png" in info["skipped"][0]["reason"]
