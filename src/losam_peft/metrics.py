"""Segmentation metrics of the paper (Eq. 3-7), per class, from TP/FP/TN/FN.

For every class ``c`` (one-vs-rest; class 0 is the background) the counts are

* ``TP`` reference ``c`` and prediction ``c``,
* ``FP`` prediction ``c`` but reference another class,
* ``FN`` reference ``c`` but prediction another class,
* ``TN`` neither reference nor prediction is ``c``,

over the *evaluated* pixels only: a pixel whose reference equals ``ignore_index`` or that lies
outside the field of view (``fov == 0``) is dropped completely (it is in none of TP/FP/TN/FN).
From the counts (all metrics are fractions in ``[0, 1]``, BM in ``[-1, 1]``):

==============  ==========================  ======================
key             formula                      paper
==============  ==========================  ======================
``precision``   TP / (TP + FP)               P, Eq. 3
``recall``      TP / (TP + FN)               REC, Eq. 4
``dice``        2TP / (2TP + FP + FN)        Dice, Eq. 5
``bm``          recall + specificity - 1     BM, Eq. 6
``iou``         TP / (TP + FP + FN)          IoU, Eq. 7
``specificity`` TN / (TN + FP)               (part of BM)
==============  ==========================  ======================

Two aggregates are reported:

* **dataset** (micro): the counts are summed over all evaluated pixels of all images, then the
  ratios are taken once (``results["per_class"]``);
* **image** (per-image mean): the ratios are taken per image, then averaged over the images
  (``results["per_image_mean"]``).

Undefined ratios (the one rule)
-------------------------------
A ratio whose denominator is 0 (a 0/0, e.g. the Dice of a class that is absent from both the
prediction and the reference of an image) is **undefined**. It is never replaced by 0, 1 or NaN:

* an undefined value is reported as ``None`` (JSON ``null``); ``bm`` is undefined when recall or
  specificity is undefined;
* the per-image mean of a metric for a class averages only the images where that value is
  defined; how many did is reported in ``per_image_mean[c]["n_images"][metric]``. When no image
  defines it, the mean is ``None``;
* dataset-level (micro) values follow the same rule: ``None`` when the summed denominator is 0
  (e.g. a class that never occurs in the references nor the predictions of the whole dataset);
* ``mean_foreground`` averages the classes ``1 .. num_labels - 1`` whose value is defined and
  reports the number of classes used in ``mean_foreground["n_classes"]``.

A class predicted in an image where the reference does not contain it is *not* undefined for
precision, Dice and IoU (0 / FP = 0): false positives are always penalised.

Three entry points compute the same numbers with the same code
--------------------------------------------------------------
1. :func:`segmentation_metrics` for arrays/tensors already in memory;
2. :class:`SegmentationMetricAccumulator` for streaming evaluation (``update`` per batch, then
   ``compute``); it works on the tensors' device with ``torch.bincount`` and keeps only one
   ``num_labels x num_labels`` confusion matrix per image, never the masks;
3. the ``evaluate`` module at :data:`EVALUATE_METRIC_PATH`
   (``evaluate.load(EVALUATE_METRIC_PATH)``), whose ``_compute`` calls this module.

Result layout (plain ``int``/``float``/``None``/``str``, hence ``json.dumps``-able; note that JSON
turns the integer class keys into strings, which :func:`format_paper_table` accepts)::

    {
      "num_labels": 2, "ignore_index": 255, "num_images": 3, "num_pixels": 1234,
      "metrics": ["precision", "recall", "specificity", "dice", "bm", "iou"],
      "labels": {0: "background", 1: "vessel"},
      "per_class": {            # dataset (micro) aggregate, keyed by class id
        1: {"id": 1, "name": "vessel", "tp": .., "fp": .., "fn": .., "tn": ..,
            "precision": .., "recall": .., "specificity": .., "dice": .., "bm": .., "iou": ..},
        ...},
      "per_image_mean": {       # mean over images, keyed by class id
        1: {"id": 1, "name": "vessel", "precision": .., ..., "iou": ..,
            "n_images": {"precision": 3, ...}},
        ...},
      "mean_foreground": {"dataset": {"dice": .., ...}, "image": {"dice": .., ...},
                          "n_classes": {"dataset": {"dice": 1, ...}, "image": {...}}},
      "by_name": {"vessel": {"dataset": <per_class[1]>, "image": <per_image_mean[1]>}, ...},
      "per_image": [            # only with per_image=True (the default)
        {"index": 0, "num_pixels": 400,
         "per_class": {1: {"tp": .., "fp": .., "fn": .., "tn": .., "precision": .., ...}, ...}},
        ...],
    }

Names come from ``id2label`` (``{id: name}``; string ids as in a JSON config are fine), else
the class id as a string. :func:`per_image_rows` flattens ``per_image`` into CSV rows and
:func:`format_paper_table` prints the paper's ``Class | Dice | REC | BM | P | IoU`` table.

Inputs: predictions and references are integer label maps (``H x W``), given as one array or
tensor ``(H, W)`` / ``(N, H, W)`` or a list of 2-D arrays/tensors (sizes may differ between
images), numpy or torch. Boolean masks count as labels 0/1. Floating-point inputs are refused
(take the ``argmax`` of the logits first). References must lie in ``[0, num_labels)`` or equal
``ignore_index``; predictions must lie in ``[0, num_labels)`` wherever a pixel is evaluated.
``fov`` has the same structure (one ``(H, W)`` mask may also serve a whole ``(N, H, W)``
batch; a list may hold ``None`` for "whole image"); non-zero means inside the field of view.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import LoSamValueError

__all__ = [
    "EVALUATE_METRIC_PATH",
    "METRIC_NAMES",
    "SegmentationMetricAccumulator",
    "confusion_mean_foreground_dice",
    "counts_to_metrics",
    "format_paper_table",
    "load_evaluate_metric",
    "mean_foreground_dice",
    "per_image_rows",
    "segmentation_metrics",
]

#: Path of the ``evaluate`` module script; ``evaluate.load(EVALUATE_METRIC_PATH)`` loads it offline.
EVALUATE_METRIC_PATH: str = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "evaluate_metric", "losam_segmentation.py"
)

#: Metric keys, in the order they appear in every result dict.
METRIC_NAMES: tuple[str, ...] = ("precision", "recall", "specificity", "dice", "bm", "iou")

_COUNT_NAMES = ("tp", "fp", "fn", "tn")


# --------------------------------------------------------------------------------------------
# input normalisation and validation
# --------------------------------------------------------------------------------------------


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"{what}: could not convert to a numeric array (got ragged or object data)")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{what} must be an integer (or boolean) label map, got dtype {t.dtype}; "
            "for logits/probabilities take the argmax over the class dimension first"
        )
    return t


def _split_images(x: Any, what: str) -> list[torch.Tensor] | torch.Tensor:
    """Return a 3-D tensor ``(N, H, W)`` for array input, or a list of 2-D tensors for list input."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        t = _as_tensor(x, what)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise LoSamValueError(
                f"{what} must be (H, W), (N, H, W) or a list of (H, W) label maps, got shape {tuple(t.shape)}"
            )
        if t.shape[0] == 0:
            raise LoSamValueError(f"{what} is empty (no images)")
        return t
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise LoSamValueError(f"{what} is empty (no images)")
        out = []
        for i, item in enumerate(x):
            t = _as_tensor(item, f"{what}[{i}]")
            if t.ndim != 2:
                raise LoSamValueError(f"{what}[{i}] must be a 2-D (H, W) label map, got shape {tuple(t.shape)}")
            out.append(t)
        return out
    if x is None:
        raise LoSamValueError(f"{what} is None")
    raise TypeError(f"{what}: expected a numpy array, a torch tensor or a list of them, got {type(x).__name__}")


def _fov_list(fov: Any, n: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor | None]:
    """Normalise ``fov`` to one boolean mask (or None) per image."""
    if fov is None:
        return [None] * n
    if isinstance(fov, (torch.Tensor, np.ndarray)):
        t = fov if isinstance(fov, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(fov)))
        if t.ndim == 2:
            items: list[Any] = [t] * n
        elif t.ndim == 3:
            if t.shape[0] != n:
                raise LoSamValueError(f"fov holds {t.shape[0]} masks but there are {n} images")
            items = list(t.unbind(0))
        else:
            raise LoSamValueError(f"fov must be (H, W), (N, H, W) or a list of (H, W) masks, got shape {tuple(t.shape)}")
    elif isinstance(fov, (list, tuple)):
        if len(fov) != n:
            raise LoSamValueError(f"fov holds {len(fov)} masks but there are {n} images")
        items = list(fov)
    else:
        raise TypeError(f"fov: expected a numpy array, a torch tensor or a list of them, got {type(fov).__name__}")
    out: list[torch.Tensor | None] = []
    for i, m in enumerate(items):
        if m is None:
            out.append(None)
            continue
        t = m if isinstance(m, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(m)))
        if tuple(t.shape) != tuple(shapes[i]):
            raise LoSamValueError(
                f"image {i}: fov shape {tuple(t.shape)} does not match the prediction/reference shape {tuple(shapes[i])}"
            )
        out.append(t != 0)
    return out


def _check_labels(values: torch.Tensor, num_labels: int, what: str, index: int, extra: str = "") -> None:
    if values.numel() == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_labels:
        bad = values[(values < 0) | (values >= num_labels)]
        shown = torch.unique(bad)[:10].tolist()
        raise LoSamValueError(
            f"{what} of image {index} holds labels outside [0, {num_labels}){extra}: {shown} "
            f"({bad.numel()} pixels); set num_labels/ignore_index accordingly"
        )


def _normalise_id2label(id2label: Mapping[Any, Any] | None, num_labels: int) -> dict[int, str]:
    names = {i: str(i) for i in range(num_labels)}
    if id2label:
        for k, v in id2label.items():
            i = int(k)
            if 0 <= i < num_labels:
                names[i] = str(v)
    seen: dict[str, int] = {}
    for i, name in names.items():
        if name in seen:
            raise LoSamValueError(f"id2label gives the same name {name!r} to classes {seen[name]} and {i}")
        seen[name] = i
    return names


# --------------------------------------------------------------------------------------------
# counts -> metrics (the single piece of arithmetic used by every entry point)
# --------------------------------------------------------------------------------------------


def _ratios(cm: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-class counts and ratios from confusion matrices ``(..., C, C)`` (rows: reference).

    Returns ``counts, values, defined``; ``values[m][..., c]`` is only meaningful where
    ``defined[m][..., c]`` is True.
    """
    cm = cm.astype(np.int64, copy=False)
    tp = np.diagonal(cm, axis1=-2, axis2=-1).copy()
    fp = cm.sum(axis=-2) - tp
    fn = cm.sum(axis=-1) - tp
    total = cm.sum(axis=(-2, -1))[..., None]
    tn = total - tp - fp - fn
    counts = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}

    def div(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = den > 0
        out = np.zeros(num.shape, dtype=np.float64)
        np.divide(num.astype(np.float64), den.astype(np.float64), out=out, where=ok)
        return out, ok

    values: dict[str, np.ndarray] = {}
    defined: dict[str, np.ndarray] = {}
    values["precision"], defined["precision"] = div(tp, tp + fp)
    values["recall"], defined["recall"] = div(tp, tp + fn)
    values["specificity"], defined["specificity"] = div(tn, tn + fp)
    values["dice"], defined["dice"] = div(2 * tp, 2 * tp + fp + fn)
    defined["bm"] = defined["recall"] & defined["specificity"]
    values["bm"] = np.where(defined["bm"], values["recall"] + values["specificity"] - 1.0, 0.0)
    values["iou"], defined["iou"] = div(tp, tp + fp + fn)
    return counts, values, defined


def _value(v: float, ok: bool) -> float | None:
    return float(v) if ok else None


def _mean_defined(vals: list[float | None]) -> tuple[float | None, int]:
    kept = [v for v in vals if v is not None]
    if not kept:
        return None, 0
    return math.fsum(kept) / len(kept), len(kept)


def counts_to_metrics(
    per_image_confusion: np.ndarray | torch.Tensor,
    id2label: Mapping[Any, Any] | None = None,
    ignore_index: int | None = None,
    per_image: bool = True,
) -> dict[str, Any]:
    """Build the result dict (see the module docstring) from per-image confusion matrices.

    ``per_image_confusion`` has shape ``(N, C, C)``: entry ``[i, r, p]`` counts the evaluated
    pixels of image ``i`` whose reference is ``r`` and prediction is ``p``. ``ignore_index`` is only
    recorded in the result.
    """
    if isinstance(per_image_confusion, torch.Tensor):
        per_image_confusion = per_image_confusion.detach().to("cpu", torch.int64).numpy()
    cms = np.asarray(per_image_confusion, dtype=np.int64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2]:
        raise LoSamValueError(f"expected per-image confusion matrices of shape (N, C, C), got {cms.shape}")
    n_img, num_labels = cms.shape[0], cms.shape[1]
    if n_img == 0:
        raise LoSamValueError("no images were added: nothing to compute")
    names = _normalise_id2label(id2label, num_labels)

    d_counts, d_vals, d_def = _ratios(cms.sum(axis=0))
    i_counts, i_vals, i_def = _ratios(cms)

    per_class: dict[int, dict[str, Any]] = {}
    per_image_mean: dict[int, dict[str, Any]] = {}
    for c in range(num_labels):
        entry: dict[str, Any] = {"id": c, "name": names[c]}
        for k in _COUNT_NAMES:
            entry[k] = int(d_counts[k][c])
        for m in METRIC_NAMES:
            entry[m] = _value(d_vals[m][c], bool(d_def[m][c]))
        per_class[c] = entry

        mean_entry: dict[str, Any] = {"id": c, "name": names[c]}
        n_used: dict[str, int] = {}
        for m in METRIC_NAMES:
            col = [_value(i_vals[m][i, c], bool(i_def[m][i, c])) for i in range(n_img)]
            mean_entry[m], n_used[m] = _mean_defined(col)
        mean_entry["n_images"] = n_used
        per_image_mean[c] = mean_entry

    mean_fg: dict[str, Any] = {"dataset": {}, "image": {}, "n_classes": {"dataset": {}, "image": {}}}
    fg = range(1, num_labels)
    for m in METRIC_NAMES:
        for level, src in (("dataset", per_class), ("image", per_image_mean)):
            v, k = _mean_defined([src[c][m] for c in fg])
            mean_fg[level][m] = v
            mean_fg["n_classes"][level][m] = k

    results: dict[str, Any] = {
        "num_labels": int(num_labels),
        "ignore_index": None if ignore_index is None else int(ignore_index),
        "num_images": int(n_img),
        "num_pixels": int(cms.sum()),
        "metrics": list(METRIC_NAMES),
        "labels": dict(names),
        "per_class": per_class,
        "per_image_mean": per_image_mean,
        "mean_foreground": mean_fg,
        "by_name": {names[c]: {"dataset": per_class[c], "image": per_image_mean[c]} for c in range(num_labels)},
    }
    if per_image:
        rows = []
        pix = cms.sum(axis=(1, 2))
        for i in range(n_img):
            pc: dict[int, dict[str, Any]] = {}
            for c in range(num_labels):
                e: dict[str, Any] = {k: int(i_counts[k][i, c]) for k in _COUNT_NAMES}
                for m in METRIC_NAMES:
                    e[m] = _value(i_vals[m][i, c], bool(i_def[m][i, c]))
                pc[c] = e
            rows.append({"index": i, "num_pixels": int(pix[i]), "per_class": pc})
        results["per_image"] = rows
    return results


def mean_foreground_dice(results: Mapping[str, Any] | None) -> float | None:
    """The package's one summary number: the mean Dice of the foreground classes ``1 ..`` whose Dice is defined.

    ``results`` is a result dict (its dataset-level ``mean_foreground["dataset"]["dice"]``) or any mapping with
    ``per_class`` entries, such as one entry of ``results["per_image"]``, whose foreground Dice values are then
    averaged by the same rule. ``None`` for no results or when no foreground Dice is defined.
    """
    if not results:
        return None
    summary = (results.get("mean_foreground") or {}).get("dataset") or {}
    if summary.get("dice") is not None:
        return float(summary["dice"])
    per_class = results.get("per_class") or {}
    return _mean_defined([entry.get("dice") for key, entry in per_class.items() if int(key) != 0])[0]


def confusion_mean_foreground_dice(confusion: np.ndarray | torch.Tensor) -> float | None:
    """:func:`mean_foreground_dice` of one ``(C, C)`` confusion matrix (rows: reference, columns: prediction)."""
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().to("cpu", torch.int64).numpy()
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise LoSamValueError(f"expected a confusion matrix of shape (C, C), got {cm.shape}")
    _, values, defined = _ratios(cm)
    dice = [_value(values["dice"][c], bool(defined["dice"][c])) for c in range(1, cm.shape[0])]
    return _mean_defined(dice)[0]


# --------------------------------------------------------------------------------------------
# streaming accumulator
# --------------------------------------------------------------------------------------------


class SegmentationMetricAccumulator:
    """Streaming per-class metrics: ``update`` per batch, ``compute`` at the end.

    Counting runs on ``device`` (default: the device of the first ``update``'s predictions when
    they are a tensor, else CPU) with ``torch.bincount``; only one ``num_labels x num_labels``
    int64 confusion matrix per image is kept (for the per-image mean), never the masks.

    Multi-process use: :meth:`sync` all-gathers the per-image counts over ``torch.distributed``;
    alternatively move :meth:`get_counts` between processes yourself and :meth:`load_counts` /
    :meth:`merge` them.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        device: str | torch.device | None = None,
        validate: bool = True,
    ) -> None:
        if int(num_labels) != num_labels or num_labels < 2:
            raise LoSamValueError(f"num_labels must be an integer >= 2 (background + at least one class), got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.device = None if device is None else torch.device(device)
        self.validate = bool(validate)
        self._chunks: list[torch.Tensor] = []
        self._num_images = 0

    # -- state -------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return self._num_images

    def reset(self) -> None:
        self._chunks = []
        self._num_images = 0

    def _target_device(self, t: torch.Tensor) -> torch.device:
        if self.device is None:
            self.device = t.device
        return self.device

    def per_image_confusion(self) -> torch.Tensor:
        """``(N, C, C)`` int64 confusion matrices (rows: reference, columns: prediction)."""
        c = self.num_labels
        if not self._chunks:
            return torch.zeros((0, c, c), dtype=torch.int64, device=self.device or "cpu")
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks, dim=0)]
        return self._chunks[0]

    def confusion_matrix(self) -> torch.Tensor:
        """``(C, C)`` int64 confusion matrix summed over all images."""
        return self.per_image_confusion().sum(dim=0)

    def get_counts(self) -> dict[str, torch.Tensor]:
        """The whole state as tensors: ``{"per_image_confusion": (N, C, C) int64}``."""
        return {"per_image_confusion": self.per_image_confusion()}

    def load_counts(self, counts: Mapping[str, Any] | torch.Tensor, append: bool = False) -> SegmentationMetricAccumulator:
        """Replace (or, with ``append=True``, extend) the state with counts from :meth:`get_counts`."""
        t = counts["per_image_confusion"] if isinstance(counts, Mapping) else counts
        t = torch.as_tensor(t)
        c = self.num_labels
        if t.ndim != 3 or tuple(t.shape[1:]) != (c, c):
            raise LoSamValueError(f"expected per-image confusion counts of shape (N, {c}, {c}), got {tuple(t.shape)}")
        if t.is_floating_point():
            raise TypeError("confusion counts must be integers")
        dev = self.device if self.device is not None else t.device
        self.device = dev
        t = t.to(dev, torch.int64)
        if not append:
            self.reset()
        self._chunks.append(t)
        self._num_images += int(t.shape[0])
        return self

    def merge(self, other: SegmentationMetricAccumulator) -> SegmentationMetricAccumulator:
        """Append the images counted by ``other`` (same ``num_labels`` and ``ignore_index``)."""
        if other.num_labels != self.num_labels or other.ignore_index != self.ignore_index:
            raise LoSamValueError(
                "cannot merge accumulators with different settings: "
                f"num_labels {self.num_labels} vs {other.num_labels}, "
                f"ignore_index {self.ignore_index} vs {other.ignore_index}"
            )
        if other.num_images:
            self.load_counts(other.get_counts(), append=True)
        return self

    def sync(self, group: Any = None) -> SegmentationMetricAccumulator:
        """All-gather the per-image counts of every process (``torch.distributed``), rank order.

        Every process ends with the counts of all images, so ``compute`` gives the same result
        everywhere. The counts must sit on a device the backend supports (CUDA for NCCL).
        A no-op when ``torch.distributed`` is not initialised.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        if world == 1:
            return self
        local = self.per_image_confusion()
        dev = local.device
        n = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n, group=group)
        sizes_i = [int(s.item()) for s in sizes]
        n_max = max(sizes_i)
        c = self.num_labels
        padded = torch.zeros((n_max, c, c), dtype=torch.int64, device=dev)
        padded[: local.shape[0]] = local
        gathered = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        allc = torch.cat([g[:k] for g, k in zip(gathered, sizes_i)], dim=0)
        return self.load_counts(allc, append=False)

    # -- counting ----------------------------------------------------------------------------
    def _count(self, pred: torch.Tensor, ref: torch.Tensor, fov: torch.Tensor | None, first_index: int) -> torch.Tensor:
        """Confusion matrices ``(n, C, C)`` of a stack ``(n, H, W)`` of same-sized images."""
        c = self.num_labels
        n = pred.shape[0]
        # int64 first: comparing e.g. uint8 with a negative ignore_index would wrap around
        ref = ref.to(torch.int64)
        pred = pred.to(torch.int64)
        valid = None
        if self.ignore_index is not None:
            valid = ref != self.ignore_index
        if fov is not None:
            valid = fov if valid is None else valid & fov
        if self.validate:
            extra = "" if self.ignore_index is None else f" (ignore_index is {self.ignore_index})"
            for t, what, ext in ((ref, "references", extra), (pred, "predictions", " at evaluated pixels")):
                lo, hi = torch.aminmax(t if valid is None else torch.where(valid, t, 0))
                if int(lo) < 0 or int(hi) >= c:
                    # locate the first offending image for the message
                    for j in range(n):
                        _check_labels(t[j] if valid is None else t[j][valid[j]], c, what, first_index + j, ext)
        code = ref * c + pred
        if n > 1:
            code = code + (torch.arange(n, device=code.device, dtype=torch.int64) * (c * c)).view(n, 1, 1)
        if valid is not None:
            # not-evaluated pixels go to one extra bin that is dropped (cheaper than masking)
            code = torch.where(valid, code, n * c * c)
        counts = torch.bincount(code.reshape(-1), minlength=n * c * c + 1)
        return counts[: n * c * c].view(n, c, c)

    @torch.no_grad()
    def update(self, predictions: Any, references: Any, fov: Any = None) -> None:
        """Count one batch: ``(H, W)``, ``(N, H, W)`` or a list of ``(H, W)``, numpy or torch."""
        preds = _split_images(predictions, "predictions")
        refs = _split_images(references, "references")
        n_p = preds.shape[0] if isinstance(preds, torch.Tensor) else len(preds)
        n_r = refs.shape[0] if isinstance(refs, torch.Tensor) else len(refs)
        if n_p != n_r:
            raise LoSamValueError(f"got {n_p} predictions but {n_r} references")
        shapes: list[tuple[int, ...]] = []
        for i in range(n_p):
            ps, rs = tuple(preds[i].shape), tuple(refs[i].shape)
            if ps != rs:
                raise LoSamValueError(
                    f"image {i}: predictions shape {ps} differs from references shape {rs}"
                    f" (image {self._num_images + i} overall)"
                )
            shapes.append(ps)
        first = preds if isinstance(preds, torch.Tensor) else preds[0]
        dev = self._target_device(first)
        fovs = _fov_list(fov, n_p, shapes)
        base = self._num_images

        if isinstance(preds, torch.Tensor) and isinstance(refs, torch.Tensor):
            # one bincount for the whole stack
            fov_t = None
            if any(f is not None for f in fovs):
                fov_t = torch.stack(
                    [torch.ones(shapes[i], dtype=torch.bool, device=dev) if f is None else f.to(dev) for i, f in enumerate(fovs)]
                )
            out = self._count(preds.to(dev), refs.to(dev), fov_t, base)
        else:
            parts = []
            for i in range(n_p):
                f = fovs[i]
                parts.append(
                    self._count(
                        preds[i].to(dev).unsqueeze(0),
                        refs[i].to(dev).unsqueeze(0),
                        None if f is None else f.to(dev).unsqueeze(0),
                        base + i,
                    )
                )
            out = torch.cat(parts, dim=0)
        self._chunks.append(out)
        self._num_images += n_p

    def compute(self, id2label: Mapping[Any, Any] | None = None, per_image: bool = True) -> dict[str, Any]:
        """The result dict described in the module docstring."""
        if self._num_images == 0:
            raise LoSamValueError("no images were added: call update() before compute()")
        return counts_to_metrics(
            self.per_image_confusion(), id2label=id2label, ignore_index=self.ignore_index, per_image=per_image
        )


# --------------------------------------------------------------------------------------------
# one-call API, evaluate loader, formatting
# --------------------------------------------------------------------------------------------


def segmentation_metrics(
    predictions: Any,
    references: Any,
    num_labels: int,
    ignore_index: int | None = 255,
    fov: Any = None,
    id2label: Mapping[Any, Any] | None = None,
    per_image: bool = True,
) -> dict[str, Any]:
    """Per-class precision, recall, Dice, BM, IoU (and specificity) of label maps.

    Args:
        predictions: predicted label maps: ``(H, W)`` or ``(N, H, W)`` array/tensor, or a list of
            ``(H, W)`` arrays/tensors (sizes may differ), values in ``[0, num_labels)``.
        references: ground-truth label maps with the same structure and shapes; values in
            ``[0, num_labels)`` or ``ignore_index``.
        num_labels: number of classes including the background (class 0).
        ignore_index: reference value whose pixels are not evaluated (``None``: none).
        fov: optional field-of-view masks (same structure; non-zero = inside; a list may hold
            ``None``); pixels outside are not evaluated.
        id2label: optional ``{id: name}``.
        per_image: include ``results["per_image"]``.

    Returns:
        The JSON-serialisable dict described in the module docstring.
    """
    acc = SegmentationMetricAccumulator(num_labels, ignore_index=ignore_index)
    acc.update(predictions, references, fov=fov)
    return acc.compute(id2label=id2label, per_image=per_image)


def load_evaluate_metric(**kwargs: Any) -> Any:
    """``evaluate.load(EVALUATE_METRIC_PATH, **kwargs)`` (imports ``evaluate`` lazily)."""
    import evaluate

    return evaluate.load(EVALUATE_METRIC_PATH, **kwargs)


def per_image_rows(results: Mapping[str, Any], image_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Flatten ``results["per_image"]`` into one row per (image, class) for a CSV writer.

    Each row: ``image`` (index or name), ``class_id``, ``class``, ``num_pixels``, counts, metrics
    (``None`` where undefined).
    """
    if "per_image" not in results:
        raise LoSamValueError("results hold no per-image values (computed with per_image=False)")
    labels = {int(k): v for k, v in results.get("labels", {}).items()}
    rows = []
    for img in results["per_image"]:
        i = int(img["index"])
        name = image_names[i] if image_names is not None else i
        for c, e in img["per_class"].items():
            c = int(c)
            row: dict[str, Any] = {"image": name, "class_id": c, "class": labels.get(c, str(c)), "num_pixels": img["num_pixels"]}
            row.update({k: e[k] for k in _COUNT_NAMES})
            row.update({m: e[m] for m in METRIC_NAMES})
            rows.append(row)
    return rows


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def format_paper_table(
    results: Mapping[str, Any],
    id2label: Mapping[Any, Any] | None = None,
    title: str | None = None,
    level: str = "dataset",
    include_background: bool = False,
    show_mean: bool | None = None,
) -> str:
    """Markdown table ``Class | Dice | REC | BM | P | IoU`` in percent with 2 decimals (as the paper).

    ``level`` is ``"dataset"`` (micro, ``results["per_class"]``) or ``"image"`` (per-image mean).
    Background (class 0) is left out unless ``include_background``; a "mean (foreground)" row is
    added when ``show_mean`` (default: when there are several foreground classes). Undefined
    values print as ``n/a``. ``id2label`` overrides the names stored in ``results``.
    """
    if level not in ("dataset", "image"):
        raise LoSamValueError(f"level must be 'dataset' or 'image', got {level!r}")
    src = results["per_class"] if level == "dataset" else results["per_image_mean"]
    table = {int(k): v for k, v in src.items()}
    overrides = {int(k): str(v) for k, v in (id2label or {}).items()}
    ids = sorted(c for c in table if include_background or c != 0)
    cols = (("Dice", "dice"), ("REC", "recall"), ("BM", "bm"), ("P", "precision"), ("IoU", "iou"))
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| Class | " + " | ".join(h for h, _ in cols) + " |")
    lines.append("|---|" + "|".join("---:" for _ in cols) + "|")
    for c in ids:
        e = table[c]
        name = overrides.get(c, e.get("name", str(c)))
        lines.append(f"| {name} | " + " | ".join(_pct(e[k]) for _, k in cols) + " |")
    n_fg = len([c for c in table if c != 0])
    if show_mean is None:
        show_mean = n_fg > 1
    if show_mean and "mean_foreground" in results:
        mf = results["mean_foreground"][level]
        lines.append("| mean (foreground) | " + " | ".join(_pct(mf[k]) for _, k in cols) + " |")
    return "\n".join(lines) + "\n"
