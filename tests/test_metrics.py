"""Tests of losam_peft.metrics and of its evaluate module against brute-force counting."""

from __future__ import annotations

import ast
import json
import math
import os

import numpy as np
import pytest
import torch

from losam_peft import metrics as M
from losam_peft.metrics import (
    EVALUATE_METRIC_PATH,
    METRIC_NAMES,
    SegmentationMetricAccumulator,
    confusion_mean_foreground_dice,
    format_paper_table,
    mean_foreground_dice,
    per_image_rows,
    segmentation_metrics,
)

# ----------------------------------------------------------------------------------------------
# brute force: plain numpy boolean ops and Python loops, written independently of the package
# ----------------------------------------------------------------------------------------------


def _ratio(num, den):
    return None if den == 0 else num / den


def brute_counts(pred, ref, c, ignore_index, fov):
    valid = np.ones(ref.shape, dtype=bool)
    if ignore_index is not None:
        valid &= ref.astype(np.int64) != ignore_index
    if fov is not None:
        valid &= np.asarray(fov) != 0
    p = pred.astype(np.int64)[valid]
    r = ref.astype(np.int64)[valid]
    tp = int(np.sum((p == c) & (r == c)))
    fp = int(np.sum((p == c) & (r != c)))
    fn = int(np.sum((p != c) & (r == c)))
    tn = int(np.sum((p != c) & (r != c)))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def brute_ratios(k):
    tp, fp, fn, tn = k["tp"], k["fp"], k["fn"], k["tn"]
    out = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
    }
    if out["recall"] is None or out["specificity"] is None:
        out["bm"] = None
    else:
        out["bm"] = out["recall"] + out["specificity"] - 1
    return out


def brute_force(preds, refs, num_labels, ignore_index=255, fovs=None):
    """preds/refs: lists of 2-D numpy arrays; fovs: list (entries may be None) or None."""
    n = len(preds)
    fovs = fovs if fovs is not None else [None] * n
    dataset, per_image, means, counts_n = {}, [], {}, {}
    for i in range(n):
        per_image.append({c: None for c in range(num_labels)})
    for c in range(num_labels):
        tot = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        per_img_vals = []
        for i in range(n):
            k = brute_counts(preds[i], refs[i], c, ignore_index, fovs[i])
            for key in tot:
                tot[key] += k[key]
            v = brute_ratios(k)
            per_image[i][c] = {**k, **v}
            per_img_vals.append(v)
        dataset[c] = {**tot, **brute_ratios(tot)}
        means[c], counts_n[c] = {}, {}
        for m in METRIC_NAMES:
            vals = [v[m] for v in per_img_vals if v[m] is not None]
            means[c][m] = sum(vals) / len(vals) if vals else None
            counts_n[c][m] = len(vals)
    return dataset, means, counts_n, per_image


def _close(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, f"{what}: {a!r} vs {b!r}"
    else:
        assert isinstance(a, float), f"{what}: not a Python float: {type(a)}"
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), f"{what}: {a!r} vs {b!r}"


def assert_matches_brute(res, preds, refs, num_labels, ignore_index=255, fovs=None):
    dataset, means, counts_n, per_image = brute_force(preds, refs, num_labels, ignore_index, fovs)
    assert res["num_labels"] == num_labels
    assert res["num_images"] == len(preds)
    assert res["num_pixels"] == sum(dataset[0][k] for k in ("tp", "fp", "fn", "tn"))
    for c in range(num_labels):
        got = res["per_class"][c]
        for k in ("tp", "fp", "fn", "tn"):
            assert got[k] == dataset[c][k], (c, k)
            assert type(got[k]) is int
        for m in METRIC_NAMES:
            _close(got[m], dataset[c][m], f"dataset class {c} {m}")
            _close(res["per_image_mean"][c][m], means[c][m], f"image-mean class {c} {m}")
            assert res["per_image_mean"][c]["n_images"][m] == counts_n[c][m]
        for i in range(len(preds)):
            gi = res["per_image"][i]["per_class"][c]
            for k in ("tp", "fp", "fn", "tn"):
                assert gi[k] == per_image[i][c][k]
            for m in METRIC_NAMES:
                _close(gi[m], per_image[i][c][m], f"image {i} class {c} {m}")
    # mean over foreground classes of the defined values
    for m in METRIC_NAMES:
        for level, src in (("dataset", dataset), ("image", means)):
            vals = [src[c][m] for c in range(1, num_labels) if src[c][m] is not None]
            _close(res["mean_foreground"][level][m], sum(vals) / len(vals) if vals else None, f"mean {level} {m}")
            assert res["mean_foreground"]["n_classes"][level][m] == len(vals)


# ----------------------------------------------------------------------------------------------
# random data
# ----------------------------------------------------------------------------------------------


def make_images(seed, num_labels, shapes, ignore_frac=0.1, ignore_index=255, with_fov=False):
    """Random label maps with rare/absent classes (so 0/0 cases occur), ignore regions and FOVs."""
    rng = np.random.default_rng(seed)
    preds, refs, fovs = [], [], []
    for h, w in shapes:
        # a random subset of classes present in this image, skewed probabilities
        present = rng.random(num_labels) < 0.7
        present[0] = True
        probs = rng.random(num_labels) * present
        probs /= probs.sum()
        ref = rng.choice(num_labels, size=(h, w), p=probs)
        pred = ref.copy()
        flip = rng.random((h, w)) < 0.3
        pred[flip] = rng.choice(num_labels, size=int(flip.sum()), p=probs)
        if ignore_index is not None and ignore_frac > 0:
            ref = ref.astype(np.int64)
            ref[rng.random((h, w)) < ignore_frac] = ignore_index
        yy, xx = np.mgrid[:h, :w]
        fov = ((yy - h / 2) ** 2 / (h / 2) ** 2 + (xx - w / 2) ** 2 / (w / 2) ** 2) < rng.uniform(0.3, 1.0)
        preds.append(pred.astype(np.int64))
        refs.append(ref.astype(np.int64))
        fovs.append(fov if with_fov else None)
    return preds, refs, (fovs if with_fov else None)


# ----------------------------------------------------------------------------------------------
# segmentation_metrics against brute force
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_labels", [2, 4, 5])
@pytest.mark.parametrize("kind", ["numpy_stack", "torch_stack", "numpy_list", "torch_list"])
def test_random_against_brute_force(seed, num_labels, kind):
    if kind.endswith("stack"):
        shapes = [(17, 23)] * 4
    else:
        shapes = [(17, 23), (9, 31), (25, 12), (1, 40)]
    with_fov = seed != 0
    preds, refs, fovs = make_images(seed * 10 + num_labels, num_labels, shapes, with_fov=with_fov)
    if kind == "numpy_stack":
        p_in, r_in = np.stack(preds).astype(np.uint8), np.stack(refs).astype(np.uint8)
        f_in = None if fovs is None else np.stack(fovs)
    elif kind == "torch_stack":
        p_in, r_in = torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(refs)).to(torch.int32)
        f_in = None if fovs is None else torch.from_numpy(np.stack(fovs))
    elif kind == "numpy_list":
        p_in, r_in, f_in = preds, [r.astype(np.int16) for r in refs], fovs
    else:
        p_in = [torch.from_numpy(p) for p in preds]
        r_in = [torch.from_numpy(r) for r in refs]
        f_in = None if fovs is None else [torch.from_numpy(f.astype(np.uint8) * 255) for f in fovs]
    res = segmentation_metrics(p_in, r_in, num_labels, fov=f_in)
    assert_matches_brute(res, preds, refs, num_labels, 255, fovs)


def test_single_2d_image_and_no_ignore_index():
    preds, refs, _ = make_images(7, 3, [(13, 11)], ignore_frac=0.0, ignore_index=None)
    res = segmentation_metrics(preds[0], torch.from_numpy(refs[0]), 3, ignore_index=None)
    assert res["ignore_index"] is None
    assert_matches_brute(res, preds, refs, 3, None)
    assert res["num_pixels"] == 13 * 11


def test_known_values_by_hand():
    ref = np.array([[0, 1, 1, 0], [0, 1, 255, 0]])
    pred = np.array([[0, 1, 0, 1], [0, 1, 1, 0]])
    res = segmentation_metrics(pred, ref, 2, id2label={0: "background", 1: "vessel"})
    v = res["per_class"][1]
    # evaluated pixels: 7; class 1: TP 2, FP 1, FN 1, TN 3
    assert (v["tp"], v["fp"], v["fn"], v["tn"]) == (2, 1, 1, 3)
    assert v["precision"] == pytest.approx(2 / 3)
    assert v["recall"] == pytest.approx(2 / 3)
    assert v["dice"] == pytest.approx(4 / 6)
    assert v["iou"] == pytest.approx(2 / 4)
    assert v["specificity"] == pytest.approx(3 / 4)
    assert v["bm"] == pytest.approx(2 / 3 + 3 / 4 - 1)
    assert res["by_name"]["vessel"]["dataset"] is v
    assert res["labels"] == {0: "background", 1: "vessel"}


def test_dataset_versus_image_mean_differ():
    # image 0: perfect on a big object; image 1: everything wrong on a tiny one
    ref0 = np.zeros((10, 10), int)
    ref0[:5] = 1
    ref1 = np.zeros((10, 10), int)
    ref1[0, 0] = 1
    pred1 = np.zeros((10, 10), int)
    res = segmentation_metrics([ref0, pred1], [ref0, ref1], 2)
    assert res["per_class"][1]["dice"] == pytest.approx(100 / 101)
    assert res["per_image_mean"][1]["dice"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# edge cases and the undefined-ratio rule
# ----------------------------------------------------------------------------------------------


def test_empty_masks_rule():
    z = np.zeros((2, 8, 9), dtype=np.uint8)
    res = segmentation_metrics(z, z, 2)
    fg = res["per_class"][1]
    assert (fg["tp"], fg["fp"], fg["fn"], fg["tn"]) == (0, 0, 0, 144)
    for m in ("precision", "recall", "dice", "iou", "bm"):
        assert fg[m] is None
        assert res["per_image_mean"][1][m] is None
        assert res["per_image_mean"][1]["n_images"][m] == 0
        assert res["mean_foreground"]["dataset"][m] is None
    assert fg["specificity"] == 1.0
    assert res["per_image_mean"][1]["specificity"] == 1.0
    assert res["per_image_mean"][1]["n_images"]["specificity"] == 2
    assert res["per_class"][0]["dice"] == 1.0
    json.dumps(res, allow_nan=False)
    assert "n/a" in format_paper_table(res)


def test_all_foreground():
    one = torch.ones((3, 5, 6), dtype=torch.int64)
    res = segmentation_metrics(one, one, 2)
    fg = res["per_class"][1]
    assert fg["dice"] == fg["iou"] == fg["precision"] == fg["recall"] == 1.0
    assert fg["specificity"] is None and fg["bm"] is None  # no negatives at all
    bg = res["per_class"][0]
    assert bg["tn"] == 90 and bg["dice"] is None and bg["specificity"] == 1.0
    assert_matches_brute(res, [o.numpy() for o in one], [o.numpy() for o in one], 2)


def test_undefined_rule_per_image_mean_skips_images():
    # class 2 is absent from prediction and reference of image 0 -> its Dice is undefined there
    # and image 0 is left out of the class-2 per-image mean; a false positive is not undefined.
    ref0 = np.array([[0, 1], [1, 0]])
    pred0 = np.array([[0, 1], [0, 0]])
    ref1 = np.array([[2, 2], [1, 0]])
    pred1 = np.array([[2, 0], [1, 0]])
    ref2 = np.array([[0, 0], [1, 1]])
    pred2 = np.array([[2, 0], [1, 1]])  # class 2 predicted where absent: precision/Dice/IoU = 0
    res = segmentation_metrics([pred0, pred1, pred2], [ref0, ref1, ref2], 3)
    img = res["per_image"]
    assert img[0]["per_class"][2]["dice"] is None
    assert img[0]["per_class"][2]["precision"] is None
    assert img[1]["per_class"][2]["dice"] == pytest.approx(2 / 3)
    assert img[2]["per_class"][2]["dice"] == 0.0
    assert img[2]["per_class"][2]["precision"] == 0.0
    assert img[2]["per_class"][2]["recall"] is None
    mean2 = res["per_image_mean"][2]
    assert mean2["dice"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert mean2["n_images"]["dice"] == 2
    assert mean2["recall"] == pytest.approx(0.5) and mean2["n_images"]["recall"] == 1
    assert_matches_brute(res, [pred0, pred1, pred2], [ref0, ref1, ref2], 3)
    # no NaN anywhere, strictly JSON-serialisable, and the values survive a round trip
    text = json.dumps(res, allow_nan=False)
    back = json.loads(text)
    assert back["per_class"]["2"]["dice"] == res["per_class"][2]["dice"]


def test_class_absent_from_whole_dataset_is_none_at_dataset_level():
    preds, refs, _ = make_images(3, 3, [(6, 7)] * 2, ignore_frac=0.0)
    preds = [np.minimum(p, 1) for p in preds]
    refs = [np.minimum(r, 1) for r in refs]
    res = segmentation_metrics(preds, refs, 4)
    assert res["per_class"][3]["dice"] is None and res["per_class"][3]["specificity"] == 1.0
    # mean_foreground uses only the classes where the value is defined
    assert res["mean_foreground"]["n_classes"]["dataset"]["dice"] <= 2
    assert_matches_brute(res, preds, refs, 4)


def test_image_with_no_evaluated_pixels():
    ref = np.full((4, 4), 255)
    pred = np.zeros((4, 4), int)
    ref2 = np.array([[0, 1], [1, 1]])
    res = segmentation_metrics([pred, ref2], [ref, ref2], 2)
    assert res["per_image"][0]["num_pixels"] == 0
    assert all(res["per_image"][0]["per_class"][1][m] is None for m in METRIC_NAMES)
    assert res["per_image_mean"][1]["n_images"]["dice"] == 1
    assert res["per_image_mean"][1]["dice"] == 1.0


def test_ignore_index_pixels_do_not_count():
    preds, refs, _ = make_images(11, 3, [(20, 20)] * 3, ignore_frac=0.3)
    base = segmentation_metrics(np.stack(preds), np.stack(refs), 3)
    scrambled = [p.copy() for p in preds]
    for p, r in zip(scrambled, refs):
        p[r == 255] = (p[r == 255] + 1) % 3
    again = segmentation_metrics(np.stack(scrambled), np.stack(refs), 3)
    assert again == base
    # predictions outside [0, num_labels) are tolerated where they are not evaluated
    wild = [p.copy() for p in preds]
    for p, r in zip(wild, refs):
        p[r == 255] = 200
    assert segmentation_metrics(wild, refs, 3) == base


def test_negative_ignore_index_with_unsigned_references():
    # uint8 references compared with ignore_index=-100 must not wrap around (156 is a label here)
    ref = np.array([[0, 1], [156, 1]], dtype=np.uint8)
    pred = np.array([[0, 1], [156, 0]], dtype=np.uint8)
    res = segmentation_metrics(pred, ref, 157, ignore_index=-100)
    assert res["num_pixels"] == 4
    ref16 = np.array([[0, 1], [-100, 1]], dtype=np.int16)
    res2 = segmentation_metrics(np.array([[0, 1], [1, 0]]), ref16, 2, ignore_index=-100)
    assert res2["num_pixels"] == 3
    assert_matches_brute(res2, [np.array([[0, 1], [1, 0]])], [ref16], 2, -100)


def test_fov_restriction():
    preds, refs, fovs = make_images(5, 2, [(30, 40)] * 3, with_fov=True)
    res = segmentation_metrics(np.stack(preds), np.stack(refs), 2, fov=np.stack(fovs))
    assert_matches_brute(res, preds, refs, 2, 255, fovs)
    # the same as marking outside-FOV pixels as ignored
    masked = [np.where(f, r, 255) for r, f in zip(refs, fovs)]
    assert segmentation_metrics(preds, masked, 2) == res
    # one (H, W) mask broadcast over a (N, H, W) batch; a list may hold None
    res_b = segmentation_metrics(np.stack(preds), np.stack(refs), 2, fov=fovs[0])
    assert_matches_brute(res_b, preds, refs, 2, 255, [fovs[0]] * 3)
    res_n = segmentation_metrics(preds, refs, 2, fov=[fovs[0], None, fovs[2]])
    assert_matches_brute(res_n, preds, refs, 2, 255, [fovs[0], None, fovs[2]])
    assert segmentation_metrics(np.stack(preds), np.stack(refs), 2, fov=[fovs[0], None, fovs[2]]) == res_n


def test_bool_inputs_and_id2label_string_keys():
    rng = np.random.default_rng(4)
    p = rng.random((2, 6, 6)) < 0.5
    r = rng.random((2, 6, 6)) < 0.5
    res = segmentation_metrics(p, r, 2, id2label={"0": "bg", "1": "vessel"})
    assert res["per_class"][1]["name"] == "vessel"
    assert set(res["by_name"]) == {"bg", "vessel"}
    assert_matches_brute(res, list(p.astype(int)), list(r.astype(int)), 2)
    # without id2label the names are the ids as strings
    assert set(segmentation_metrics(p, r, 2)["by_name"]) == {"0", "1"}


# ----------------------------------------------------------------------------------------------
# accumulator
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels", [2, 4])
def test_the_one_mean_foreground_dice(num_labels):
    preds, refs, fovs = make_images(5, num_labels, [(9, 9), (8, 11), (7, 7), (10, 6)], with_fov=True)
    acc = SegmentationMetricAccumulator(num_labels)
    acc.update(preds, refs, fov=fovs)
    res = acc.compute()
    assert mean_foreground_dice(res) == res["mean_foreground"]["dataset"]["dice"]
    assert mean_foreground_dice(json.loads(json.dumps(res))) == res["mean_foreground"]["dataset"]["dice"]
    assert confusion_mean_foreground_dice(acc.per_image_confusion().sum(dim=0)) == pytest.approx(
        res["mean_foreground"]["dataset"]["dice"], abs=1e-15
    )
    for entry, confusion in zip(res["per_image"], acc.per_image_confusion()):
        values = [entry["per_class"][c]["dice"] for c in range(1, num_labels)]
        values = [v for v in values if v is not None]
        expected = sum(values) / len(values) if values else None
        _close(mean_foreground_dice(entry), expected, "per-image mean foreground Dice")
        assert confusion_mean_foreground_dice(confusion) == mean_foreground_dice(entry)


def test_mean_foreground_dice_undefined():
    assert mean_foreground_dice(None) is None and mean_foreground_dice({}) is None
    background_only = segmentation_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), 2)
    assert mean_foreground_dice(background_only) is None
    assert confusion_mean_foreground_dice(np.array([[16, 0], [0, 0]])) is None
    assert confusion_mean_foreground_dice(torch.tensor([[2, 1], [1, 2]])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"\(C, C\)"):
        confusion_mean_foreground_dice(np.zeros((2, 3), int))


def test_accumulator_streaming_equals_one_call():
    preds, refs, fovs = make_images(21, 4, [(15, 16), (15, 16), (8, 9), (20, 5), (15, 16)], with_fov=True)
    one = segmentation_metrics(preds, refs, 4, fov=fovs)
    acc = SegmentationMetricAccumulator(4)
    acc.update(torch.from_numpy(np.stack(preds[:2])), np.stack(refs[:2]), fov=np.stack(fovs[:2]))
    acc.update(preds[2], refs[2], fov=fovs[2])
    acc.update([torch.from_numpy(preds[3]), preds[4]], refs[3:], fov=fovs[3:])
    assert acc.num_images == 5
    assert acc.compute() == one
    assert acc.per_image_confusion().shape == (5, 4, 4)
    assert int(acc.confusion_matrix().sum()) == one["num_pixels"]
    assert "per_image" not in acc.compute(per_image=False)


def test_accumulator_merge_and_counts_round_trip():
    preds, refs, _ = make_images(8, 3, [(10, 11)] * 6)
    whole = segmentation_metrics(preds, refs, 3)
    a, b = SegmentationMetricAccumulator(3), SegmentationMetricAccumulator(3)
    a.update(preds[:4], refs[:4])
    b.update(np.stack(preds[4:]), np.stack(refs[4:]))
    assert a.merge(b).compute() == whole
    c = SegmentationMetricAccumulator(3).load_counts(a.get_counts())
    assert c.compute() == whole
    d = SegmentationMetricAccumulator(3).load_counts(a.get_counts()["per_image_confusion"][:2])
    d.load_counts(a.get_counts()["per_image_confusion"][2:], append=True)
    assert d.compute() == whole
    with pytest.raises(ValueError, match="different settings"):
        a.merge(SegmentationMetricAccumulator(4))
    with pytest.raises(ValueError, match="shape"):
        SegmentationMetricAccumulator(3).load_counts(torch.zeros(2, 4, 4, dtype=torch.int64))
    a.reset()
    assert a.num_images == 0
    with pytest.raises(ValueError, match="no images"):
        a.compute()


def test_accumulator_sync_all_gathers_ragged_counts(monkeypatch):
    """sync() with a simulated 2-process world: rank 0 holds 3 images, rank 1 holds 1."""
    import torch.distributed as dist

    preds, refs, _ = make_images(9, 2, [(7, 8)] * 4)
    whole = segmentation_metrics(preds, refs, 2)
    mine = SegmentationMetricAccumulator(2)
    mine.update(preds[:3], refs[:3])
    other = SegmentationMetricAccumulator(2)
    other.update(preds[3:], refs[3:])
    other_counts = other.per_image_confusion()

    def fake_all_gather(out, tensor, group=None):
        assert len(out) == 2
        out[0].copy_(tensor)
        if tensor.ndim == 1:  # the sizes
            out[1].copy_(torch.tensor([other_counts.shape[0]]))
        else:  # the padded counts
            pad = torch.zeros_like(tensor)
            pad[: other_counts.shape[0]] = other_counts
            out[1].copy_(pad)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather", fake_all_gather)
    assert mine.sync().compute() == whole


def test_accumulator_sync_is_noop_without_distributed():
    acc = SegmentationMetricAccumulator(2)
    acc.update(np.zeros((2, 3), int), np.zeros((2, 3), int))
    assert acc.sync().num_images == 1


def test_accumulator_device():
    acc = SegmentationMetricAccumulator(3, device="cpu")
    acc.update(np.zeros((1, 4, 4), int), np.ones((1, 4, 4), int))
    assert acc.per_image_confusion().device.type == "cpu"
    assert acc.per_image_confusion().dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulator_on_cuda_matches_cpu():
    preds, refs, fovs = make_images(12, 5, [(64, 48)] * 3, with_fov=True)
    cpu = segmentation_metrics(preds, refs, 5, fov=fovs)
    acc = SegmentationMetricAccumulator(5)
    acc.update(torch.from_numpy(np.stack(preds)).cuda(), torch.from_numpy(np.stack(refs)).cuda(),
               fov=torch.from_numpy(np.stack(fovs)).cuda())
    assert acc.per_image_confusion().is_cuda
    assert acc.compute() == cpu


# ----------------------------------------------------------------------------------------------
# validation errors
# ----------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes_and_index():
    a = [np.zeros((4, 5), int), np.zeros((6, 7), int)]
    b = [np.zeros((4, 5), int), np.zeros((7, 6), int)]
    with pytest.raises(ValueError, match=r"image 1.*\(6, 7\).*\(7, 6\)"):
        segmentation_metrics(a, b, 2)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        segmentation_metrics(np.zeros((4, 5), int), np.zeros((4, 6), int), 2)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        segmentation_metrics(a, b[:1], 2)
    with pytest.raises(ValueError, match="fov shape"):
        segmentation_metrics(a, a, 2, fov=[None, np.ones((5, 5), bool)])
    with pytest.raises(ValueError, match="fov holds 1"):
        segmentation_metrics(a, a, 2, fov=[None])


def test_label_range_errors():
    ok = np.zeros((3, 3), int)
    bad_ref = ok.copy()
    bad_ref[1, 1] = 3
    with pytest.raises(ValueError, match=r"references of image 1 .*outside \[0, 3\).*\[3\]"):
        segmentation_metrics([ok, ok], [ok, bad_ref], 3)
    neg = ok.copy()
    neg[0, 0] = -1
    with pytest.raises(ValueError, match=r"references .*\[-1\]"):
        segmentation_metrics(ok, neg, 3)
    bad_pred = ok.copy()
    bad_pred[0, 2] = 7
    with pytest.raises(ValueError, match=r"predictions of image 2 .*\[7\]"):
        segmentation_metrics(np.stack([ok, ok, bad_pred]), np.stack([ok, ok, ok]), 3)
    # 255 in references is fine (ignored), but not when ignore_index is something else
    ign = ok.copy()
    ign[0, 0] = 255
    segmentation_metrics(ok, ign, 3)
    with pytest.raises(ValueError, match="references"):
        segmentation_metrics(ok, ign, 3, ignore_index=None)
    # out-of-range predictions outside the FOV are not evaluated
    fov = np.ones((3, 3), bool)
    fov[0, 2] = False
    segmentation_metrics(bad_pred, ok, 3, fov=fov)


def test_empty_and_type_errors():
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics([], [], 2)
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(np.zeros((0, 4, 4), int), np.zeros((0, 4, 4), int), 2)
    with pytest.raises(ValueError, match="no images"):
        SegmentationMetricAccumulator(2).compute()
    with pytest.raises(TypeError, match="argmax"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4), int), 2)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((1, 2, 4, 4), int), np.zeros((1, 2, 4, 4), int), 2)
    with pytest.raises(ValueError, match="num_labels"):
        SegmentationMetricAccumulator(1)
    with pytest.raises(ValueError, match="same name"):
        segmentation_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), 2, id2label={0: "x", 1: "x"})


# ----------------------------------------------------------------------------------------------
# formatting and helpers
# ----------------------------------------------------------------------------------------------


def test_format_paper_table():
    ref = np.array([[0, 1, 1, 0], [0, 1, 2, 0]])
    pred = np.array([[0, 1, 0, 1], [0, 1, 2, 0]])
    res = segmentation_metrics(pred, ref, 3, id2label={0: "bg", 1: "HE", 2: "EX"})
    text = format_paper_table(res, title="IDRiD one-shot")
    lines = text.strip().splitlines()
    assert lines[0] == "**IDRiD one-shot**"
    assert lines[2] == "| Class | Dice | REC | BM | P | IoU |"
    assert lines[3].startswith("|---|")
    he = res["per_class"][1]
    expected = "| HE | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(
        *(100 * he[k] for k in ("dice", "recall", "bm", "precision", "iou"))
    )
    assert lines[4] == expected == "| HE | 66.67 | 66.67 | 46.67 | 66.67 | 50.00 |"  # TN 4, spec 0.8
    assert lines[5] == "| EX | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 |"
    assert lines[6].startswith("| mean (foreground) | 83.33 |")
    assert "bg" not in text
    # background on request, names overridden, per-image level, JSON round trip (str keys)
    t2 = format_paper_table(json.loads(json.dumps(res)), id2label={1: "haemorrhage"}, include_background=True)
    assert "| bg |" in t2 and "| haemorrhage |" in t2 and "**" not in t2
    t3 = format_paper_table(res, level="image", show_mean=False)
    assert "mean" not in t3
    with pytest.raises(ValueError, match="level"):
        format_paper_table(res, level="micro")


def test_per_image_rows_for_csv():
    preds, refs, _ = make_images(2, 3, [(5, 6), (7, 3)])
    res = segmentation_metrics(preds, refs, 3, id2label={0: "bg", 1: "a", 2: "b"})
    rows = per_image_rows(res, image_names=["x.png", "y.png"])
    assert len(rows) == 2 * 3
    assert rows[4]["image"] == "y.png" and rows[4]["class"] == "a" and rows[4]["class_id"] == 1
    assert rows[4]["dice"] == res["per_image"][1]["per_class"][1]["dice"]
    assert set(METRIC_NAMES) <= set(rows[0])
    with pytest.raises(ValueError):
        per_image_rows(segmentation_metrics(preds, refs, 3, per_image=False))


def test_result_is_plain_json():
    preds, refs, fovs = make_images(6, 4, [(9, 9), (4, 12)], with_fov=True)
    res = segmentation_metrics([torch.from_numpy(p) for p in preds], refs, 4, fov=fovs)

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                assert type(k) in (int, str)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (int, float, str), type(x)
            if type(x) is float:
                assert math.isfinite(x)

    walk(res)
    json.dumps(res, allow_nan=False)


def test_metrics_module_does_not_import_evaluate_eagerly():
    tree = ast.parse(open(M.__file__, encoding="utf-8").read())
    top_level = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.append(node.module.split(".")[0])
    assert "evaluate" not in top_level and "datasets" not in top_level
    assert os.path.isfile(EVALUATE_METRIC_PATH)
    assert os.path.basename(EVALUATE_METRIC_PATH) == "losam_segmentation.py"


# ----------------------------------------------------------------------------------------------
# the evaluate module, loaded for real and offline
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluate_metric(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_EVALUATE_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        import evaluate

        metric = evaluate.load(EVALUATE_METRIC_PATH, cache_dir=str(tmp_path_factory.mktemp("evaluate_cache")))
        yield metric


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_module_matches(evaluate_metric, seed):
    num_labels = 5 if seed else 2
    preds, refs, fovs = make_images(100 + seed, num_labels, [(12, 14), (12, 14), (9, 20), (3, 3)], with_fov=True)
    fovs[1] = None
    # batches of mixed kinds: torch stack, numpy list with fov, a single example via add()
    evaluate_metric.add_batch(
        predictions=torch.from_numpy(np.stack(preds[:2])), references=np.stack(refs[:2]), fov=fovs[:2]
    )
    evaluate_metric.add_batch(predictions=[preds[2]], references=[torch.from_numpy(refs[2])], fov=[fovs[2]])
    evaluate_metric.add(prediction=preds[3], reference=refs[3], fov=fovs[3])
    got = evaluate_metric.compute(num_labels=num_labels, ignore_index=255, id2label={1: "vessel"}, nested=True)
    expected = segmentation_metrics(preds, refs, num_labels, fov=fovs, id2label={1: "vessel"})
    assert got == expected
    assert_matches_brute(got, preds, refs, num_labels, 255, fovs)
    assert got["per_class"][1]["name"] == "vessel"


def test_evaluate_module_compute_direct_and_no_fov(evaluate_metric):
    preds, refs, _ = make_images(55, 3, [(8, 8), (5, 9)])
    got = evaluate_metric.compute(predictions=preds, references=refs, num_labels=3, nested=True)
    assert got == segmentation_metrics(preds, refs, 3)
    # uniform-size batch without fov, ignore_index None, all-background edge case
    z = np.zeros((2, 4, 4), dtype=np.uint8)
    evaluate_metric.add_batch(predictions=z, references=z)
    got = evaluate_metric.compute(num_labels=2, ignore_index=None, per_image=False, nested=True)
    assert got == segmentation_metrics(z, z, 2, ignore_index=None, per_image=False)
    assert got["per_class"][1]["dice"] is None


def test_evaluate_module_errors(evaluate_metric):
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        evaluate_metric.add_batch(predictions=[np.zeros((4, 4), int)], references=[np.zeros((4, 5), int)])
    with pytest.raises(TypeError, match="argmax"):
        evaluate_metric.add_batch(predictions=[np.zeros((4, 4))], references=[np.zeros((4, 4), int)])
    evaluate_metric.add_batch(predictions=[np.full((2, 2), 3)], references=[np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="predictions of image 0"):
        evaluate_metric.compute(num_labels=2)
    evaluate_metric.add_batch(predictions=[np.zeros((2, 2), int)], references=[np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="num_labels"):
        evaluate_metric.compute()


def test_evaluate_module_refuses_values_outside_storage_range(evaluate_metric):
    with pytest.raises(ValueError, match="int16"):
        evaluate_metric.add_batch(predictions=[np.full((2, 2), 40000)], references=[np.zeros((2, 2), int)])


def test_load_evaluate_metric_helper_in_memory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = M.load_evaluate_metric(keep_in_memory=True)
    preds, refs, fovs = make_images(77, 2, [(6, 6), (5, 7)], with_fov=True)
    got = metric.compute(predictions=preds, references=refs, fov=fovs, num_labels=2, nested=True)
    assert got == segmentation_metrics(preds, refs, 2, fov=fovs)
    flat = metric.compute(predictions=preds, references=refs, fov=fovs, num_labels=2, id2label={0: "background", 1: "vessel"})
    expected = segmentation_metrics(preds, refs, 2, fov=fovs)
    assert flat["dice_vessel"] == expected["per_class"][1]["dice"] and flat["mean_dice"] == expected["mean_foreground"]["dataset"]["dice"]
    assert flat["image_mean_iou"] == expected["mean_foreground"]["image"]["iou"]
    assert all(not isinstance(v, dict) for v in flat.values())
