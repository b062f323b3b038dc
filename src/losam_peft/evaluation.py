"""Evaluating an adapter on a labelled dataset: the paper's metrics, per-image results, overlays and plots.

    losam evaluate --adapter DIR_OR_ID --dataset NAME --data-root ROOT [--split test] --output-dir DIR
    losam evaluate --adapter DIR_OR_ID --images DIR --masks DIR --output-dir DIR

The library call behind it is :func:`evaluate_adapter`::

    from losam_peft.evaluation import evaluate_adapter
    results = evaluate_adapter("path/to/adapter", dataset, output_dir="eval")   # or a LoSamPipeline / model
    print(format_paper_table(results))

Every image is segmented at the model's input size and the logits are resized back to the image's *original*
size before the argmax (``LoSamImageProcessor.post_process_semantic_segmentation``), so the metrics are computed on
the labels exactly as distributed. Pixels outside the field of view (where the dataset has FOV masks; ``--no-fov``
turns that off) and reference pixels equal to 255 are not evaluated.

Outputs in ``output_dir`` (each written to a temporary file and moved into place with ``os.replace``):

* ``results.json``: the metric dict of :mod:`losam_peft.metrics` (``per_class``, ``per_image_mean``,
  ``mean_foreground``, ``per_image`` with each image's ``id``) plus ``evaluation`` (adapter, base, dataset, split,
  FOV use, label check, timing) and ``outputs``;
* ``results.csv``: one row per class and aggregate (``dataset`` = counts summed over all pixels, ``image`` = mean
  over images), fractions in [0, 1];
* ``per_image.csv``: one row per image and class (counts and metrics);
* ``overlays/best_*.png``, ``overlays/worst_*.png``: image | ground truth | prediction | error map (TP white, FP orange, FN reddish purple, with a legend) of the images with the
  highest and lowest mean foreground Dice;
* ``dice_per_image.png``: the per-image Dice, sorted.
"""

from __future__ import annotations

import heapq
import io
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict

from .atomic import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    check_output_dir,  # noqa: F401
)
from .baselines import is_method_folder, load_method_pipeline
from .constants import IGNORE_INDEX
from .data import DATASETS, folder, label_info, skipped_samples
from .data.samples import Sample, id2label_of, sample_from_row
from .data.sources import load_dataset_split
from .errors import DataError, LabelMismatchError, LoSamValueError
from .image_processing_losam import to_rgb8
from .labels import is_generic_label, normalise_id2label
from .metrics import (
    SegmentationMetricAccumulator,
    confusion_mean_foreground_dice,
    mean_foreground_dice,
    per_image_rows,
)
from .pipeline import LoSamPipeline
from .visualization import comparison_panel

__all__ = [
    "LabelMismatchError",
    "check_labels",
    "load_evaluation_data",
    "evaluate_adapter",
    "load_for_evaluation",
]

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
PER_IMAGE_CSV = "per_image.csv"
OVERLAY_DIR = "overlays"
DICE_PLOT = "dice_per_image.png"
OVERLAY_MIN_SIDE, OVERLAY_MAX_SIDE = 256, 1024
METRIC_COLUMNS = ("dice", "recall", "bm", "precision", "iou", "specificity")
# label names that carry no meaning of their own (folder defaults): a name mismatch against them is not worth a warning


# -- atomic writes -----------------------------------------------------------------------------------------------------
# -- labels ------------------------------------------------------------------------------------------------------------
def _norm_labels(id2label: Mapping | None) -> dict[int, str] | None:
    if id2label is None:
        return None
    return normalise_id2label(dict(id2label))


def check_labels(
    model_labels: Mapping,
    dataset_labels: Mapping | None,
    *,
    model_name: str = "the adapter",
    dataset_name: str = "the dataset",
) -> list[str]:
    """Compare the adapter's ``id2label`` with the dataset's.

    A different number of classes raises :class:`LabelMismatchError` naming both; the same number with different
    names gives a warning (returned, and issued with ``warnings.warn``). Generic names (``foreground``, ``class_2``)
    are not compared.
    """
    model_labels = _norm_labels(model_labels) or {}
    dataset_labels = _norm_labels(dataset_labels)
    if dataset_labels is None:
        return []
    if len(model_labels) != len(dataset_labels):
        raise LabelMismatchError(
            f"{model_name} predicts {len(model_labels)} classes {_describe(model_labels)}, but {dataset_name} is "
            f"labelled with {len(dataset_labels)} classes {_describe(dataset_labels)}; evaluate it on data with the "
            "same classes (or load the dataset variant with matching labels)"
        )
    differing = [
        (i, model_labels[i], dataset_labels.get(i))
        for i in sorted(model_labels)
        if i != 0
        and dataset_labels.get(i) is not None
        and model_labels[i].strip().lower() != dataset_labels[i].strip().lower()
        and not is_generic_label(model_labels[i])
        and not is_generic_label(dataset_labels[i])
    ]
    if not differing:
        return []
    pairs = ", ".join(f"{i}: {m!r} vs {d!r}" for i, m, d in differing)
    message = (
        f"{model_name} and {dataset_name} have the same number of classes but different names ({pairs}); "
        "the metrics are computed by class id"
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    return [message]


def _describe(id2label: Mapping[int, str]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(id2label.items())) + ")"


# -- samples -----------------------------------------------------------------------------------------------------------
def _is_hf_dataset(obj) -> bool:
    try:
        from datasets import Dataset, IterableDataset
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (Dataset, IterableDataset))


def _dataset_labels(source) -> dict[int, str] | None:
    if _is_hf_dataset(source):
        return id2label_of(source)
    return None


def _to_sample(item, index: int):
    if isinstance(item, Sample):
        return item
    if isinstance(item, Mapping):
        return sample_from_row(item, index)
    label = getattr(item, "label", None)
    if label is None:
        label = getattr(item, "mask", None)
    if label is None or getattr(item, "image", None) is None:
        raise TypeError(
            f"item {index}: expected a Sample, a dataset row or an object with image and label/mask, got "
            f"{type(item).__name__}"
        )
    fov = getattr(item, "fov", None)
    return Sample(
        np.asarray(item.image), np.asarray(label), str(getattr(item, "id", "") or index), None if fov is None else fov
    )


def _iter_samples(source, limit: int | None) -> Iterator:
    for index, item in enumerate(source):
        if limit is not None and index >= limit:
            return
        yield _to_sample(item, index)


def _length(source, limit: int | None) -> int | None:
    try:
        n = len(source)
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


# -- the model ---------------------------------------------------------------------------------------------------------
def load_for_evaluation(adapter: str | os.PathLike, base: str | None = None, device=None, dtype=None):
    """A ``LoSamPipeline`` for an adapter folder/Hub id, or for a model written by ``losam compare`` (head-only,
    LoRA or fully fine-tuned: a folder with ``method.json``)."""
    if is_method_folder(adapter):
        return load_method_pipeline(adapter, base=base, device=device, dtype=dtype)
    return LoSamPipeline.from_pretrained(str(adapter), base=base, device=device, dtype=dtype)


def _as_pipeline(model_or_pipeline, *, base, device, dtype, image_processor):
    if isinstance(model_or_pipeline, (str, os.PathLike)):
        return load_for_evaluation(model_or_pipeline, base=base, device=device, dtype=dtype)
    if hasattr(model_or_pipeline, "predict_loaded") and hasattr(model_or_pipeline, "id2label"):
        return model_or_pipeline
    if isinstance(model_or_pipeline, torch.nn.Module):
        return LoSamPipeline(model_or_pipeline, image_processor, device=device, dtype=dtype)
    raise TypeError(
        "evaluate_adapter needs a LoSamPipeline, a model (PeftModel or SamForSemanticSegmentation) or an adapter "
        f"folder/Hub id, got {type(model_or_pipeline).__name__}"
    )


def _model_name(pipe, fallback: str = "the adapter") -> str:
    name = getattr(pipe, "adapter", None)
    return f"the adapter {name}" if name else fallback


# -- evaluation --------------------------------------------------------------------------------------------------------
def evaluate_adapter(
    model_or_pipeline,
    samples,
    id2label: Mapping | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    base: str | None = None,
    device=None,
    dtype=None,
    image_processor=None,
    batch_size: int = 1,
    use_fov: bool = True,
    max_images: int | None = None,
    num_overlays: int = 3,
    plot: bool = True,
    progress: bool = True,
    dataset_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict:
    """Segment every sample and compute the paper's metrics against its label.

    Args:
        model_or_pipeline: a ``LoSamPipeline``, a model (``PeftModel`` with a LoSAM adapter or any
            ``SamForSemanticSegmentation``; wrapped with ``image_processor``), or an adapter folder / Hub id.
        samples: a ``datasets.Dataset`` with ``image``/``label`` (and ``fov``/``id``) columns, or a sequence of
            :class:`losam_peft.data.samples.Sample` (or dataset rows). Rows are read one at a time.
        id2label: the dataset's class names, checked against the model's (default: read from a loaded dataset).
            A different number of classes raises :class:`LabelMismatchError`; different names only warn.
        output_dir: where the result files go (see the module docstring); ``None`` writes nothing.
        base, device, dtype: for loading an adapter given by name (``base`` overrides the adapter's base model).
        batch_size: images per forward pass.
        use_fov: leave pixels outside each sample's FOV mask out (where the sample has one).
        max_images: evaluate only the first N images.
        num_overlays: how many best and worst images get an overlay PNG.
        plot: write ``dice_per_image.png``.
        progress: show a progress bar.
        dataset_name: how the data is named in messages and ``results.json``.
        metadata: extra entries recorded under ``results["evaluation"]``.

    Returns:
        The metric dict of :func:`losam_peft.metrics.segmentation_metrics` (so ``format_paper_table`` and
        ``metrics.mean_foreground_dice`` take it as is), whose ``per_image`` entries also carry the image ``id``,
        plus ``evaluation`` (what was evaluated, how, and how long it took) and ``outputs`` (paths written).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LoSamValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_images is not None and max_images < 1:
        raise LoSamValueError(f"max_images must be at least 1, got {max_images}")
    if output_dir is not None:
        check_output_dir(output_dir)
    started = time.perf_counter()
    dataset_name = dataset_name or "the dataset"
    pipe = _as_pipeline(model_or_pipeline, base=base, device=device, dtype=dtype, image_processor=image_processor)
    model_labels = normalise_id2label(pipe.id2label)
    num_labels = len(model_labels)
    data_labels = _norm_labels(id2label) if id2label is not None else _dataset_labels(samples)
    label_warnings = check_labels(model_labels, data_labels, model_name=_model_name(pipe), dataset_name=dataset_name)

    total = _length(samples, max_images)
    if total == 0:
        raise DataError(f"nothing to evaluate: {dataset_name} holds no images (evaluating {_model_name(pipe)})")

    accumulator = SegmentationMetricAccumulator(num_labels=num_labels)
    ids: list[str] = []
    fov_used = 0
    keep = max(0, int(num_overlays))
    best: list = []  # min-heap of (dice, order, payload): the `keep` highest
    worst: list = []  # min-heap of (-dice, order, payload): the `keep` lowest
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"evaluating {dataset_name}", unit="img", dynamic_ncols=True)

    def run(batch):
        nonlocal fov_used
        results = pipe.predict_loaded([s.image for s in batch], batch_size=batch_size)
        for sample, result in zip(batch, results):
            prediction = np.asarray(result.label_map)
            reference = np.asarray(sample.label)
            if prediction.shape != reference.shape:
                raise DataError(
                    f"image {sample.id!r} of {dataset_name}: the prediction of {_model_name(pipe)} is "
                    f"{prediction.shape[1]}x{prediction.shape[0]} pixels but the reference mask is "
                    f"{reference.shape[1]}x{reference.shape[0]}"
                )
            _check_reference(reference, num_labels, sample.id, dataset_name, model_labels, data_labels)
            fov = sample.fov if (use_fov and sample.fov is not None) else None
            fov_used += fov is not None
            accumulator.update(
                torch.from_numpy(prediction.astype(np.int64)),
                torch.from_numpy(reference.astype(np.int64)),
                fov=None if fov is None else torch.from_numpy(np.asarray(fov, dtype=bool)),
            )
            order = len(ids)
            ids.append(str(sample.id))
            if keep:
                dice = confusion_mean_foreground_dice(accumulator.per_image_confusion()[-1])
                if dice is not None:
                    payload = (sample, prediction, fov)
                    _push(best, (dice, -order, payload), keep)
                    _push(worst, (-dice, -order, payload), keep)
            if bar is not None:
                bar.update(1)

    try:
        batch = []
        for sample in _iter_samples(samples, max_images):
            batch.append(sample)
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        if bar is not None:
            bar.close()
    if not ids:
        raise DataError(f"nothing to evaluate: {dataset_name} holds no images (evaluating {_model_name(pipe)})")

    results = accumulator.compute(id2label=model_labels, per_image=True)
    for entry, image_id in zip(results["per_image"], ids):
        entry["id"] = image_id
        entry["mean_foreground_dice"] = mean_foreground_dice(entry)
    seconds = time.perf_counter() - started
    results["evaluation"] = {
        "adapter": getattr(pipe, "adapter", None),
        "base": getattr(pipe, "base_model", None) or base,
        "dataset": dataset_name,
        "num_images": len(ids),
        "image_ids": ids,
        "fov": bool(use_fov),
        "images_with_fov": fov_used,
        "model_labels": model_labels,
        "dataset_labels": data_labels,
        "label_warnings": label_warnings,
        "image_size": getattr(pipe, "image_size", None),
        "device": str(getattr(pipe, "device", "")),
        "dtype": str(getattr(pipe, "dtype", None) or "float32").replace("torch.", ""),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        # the files skip_bad left out when the data was loaded (each with the file and the problem)
        "skipped": skipped_samples(samples) if hasattr(samples, "info") or isinstance(samples, DatasetDict) else [],
        **dict(metadata or {}),
    }
    results["outputs"] = {}
    if output_dir is not None:
        results["outputs"] = _write_outputs(
            Path(output_dir), results, ids, pipe, sorted(best, reverse=True), sorted(worst, reverse=True), plot
        )
        atomic_write_json(Path(output_dir) / RESULTS_JSON, results)
    return results


def _push(heap: list, item, keep: int) -> None:
    # the payload never takes part in the ordering: (score, -order) is unique
    if len(heap) < keep:
        heapq.heappush(heap, _Ranked(item))
    elif item[:2] > heap[0].key:
        heapq.heapreplace(heap, _Ranked(item))


class _Ranked:
    __slots__ = ("key", "payload")

    def __init__(self, item):
        self.key, self.payload = item[:2], item[2]

    def __lt__(self, other):
        return self.key < other.key


def _check_reference(reference, num_labels, image_id, dataset_name, model_labels, data_labels) -> None:
    values = np.unique(reference)
    bad = values[(values >= num_labels) & (values != IGNORE_INDEX)]
    if bad.size:
        raise LabelMismatchError(
            f"image {image_id!r} of {dataset_name} holds class ids {bad[:8].tolist()}, but the adapter predicts only "
            f"{num_labels} classes {_describe(model_labels)}"
            + (f"; the dataset's classes are {_describe(data_labels)}" if data_labels else "")
        )


# -- outputs -----------------------------------------------------------------------------------------------------------
def results_rows(results: Mapping[str, Any]) -> list[dict]:
    """Rows of ``results.csv``: every class at both aggregation levels, then the foreground means."""
    rows = []
    for level, key in (("dataset", "per_class"), ("image", "per_image_mean")):
        for class_id, entry in sorted(((int(k), v) for k, v in results[key].items())):
            row = {"level": level, "class_id": class_id, "class": entry.get("name", str(class_id))}
            row.update({m: entry.get(m) for m in METRIC_COLUMNS})
            if level == "dataset":
                row.update({k: entry.get(k) for k in ("tp", "fp", "fn", "tn")})
            rows.append(row)
        mean = results.get("mean_foreground", {}).get(level, {})
        rows.append(
            {"level": level, "class_id": "", "class": "mean (foreground)", **{m: mean.get(m) for m in METRIC_COLUMNS}}
        )
    return rows


def _write_outputs(output_dir: Path, results, ids, pipe, best, worst, plot: bool) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"results_json": str(output_dir / RESULTS_JSON)}
    columns = ["level", "class_id", "class", *METRIC_COLUMNS, "tp", "fp", "fn", "tn"]
    atomic_write_csv(output_dir / RESULTS_CSV, results_rows(results), columns)
    outputs["results_csv"] = str(output_dir / RESULTS_CSV)
    rows = per_image_rows(results, image_names=ids)
    atomic_write_csv(output_dir / PER_IMAGE_CSV, rows, list(rows[0]) if rows else None)
    outputs["per_image_csv"] = str(output_dir / PER_IMAGE_CSV)
    overlays = []
    for stale in (output_dir / OVERLAY_DIR).glob("*.png"):  # a previous run's overlays would pass for this run's
        if stale.name.startswith(("best_", "worst_")):
            stale.unlink()
    for kind, ranked in (("best", best), ("worst", worst)):
        for rank, item in enumerate(ranked, start=1):
            sample, prediction, fov = item.payload
            dice = abs(item.key[0])
            name = f"{kind}_{rank:02d}_{_safe_name(sample.id)}.png"
            _write_overlay(
                output_dir / OVERLAY_DIR / name, sample, prediction, fov, pipe, f"{kind} {rank}: {sample.id}", dice
            )
            overlays.append(str(output_dir / OVERLAY_DIR / name))
    outputs["overlays"] = overlays
    if plot:
        _plot_dice(results, output_dir / DICE_PLOT)
        outputs["dice_plot"] = str(output_dir / DICE_PLOT)
    return outputs


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:80] or "image"


def _write_overlay(path: Path, sample, prediction, fov, pipe, title: str, dice: float) -> None:

    canvas = comparison_panel(
        to_rgb8(sample.image),
        sample.label,
        prediction,
        title=f"{title}  (mean foreground Dice {100 * dice:.2f}%)",
        num_labels=len(pipe.id2label),
        fov=fov,  # what is outside the FOV is not evaluated: do not draw it either
        errors=True,  # a fourth panel: where the prediction is right (TP) and wrong (FP, FN, wrong class)
        id2label=pipe.id2label,
        min_side=OVERLAY_MIN_SIDE,  # panels are shown at a readable size: small images enlarged, huge ones reduced
        max_side=OVERLAY_MAX_SIDE,
    )
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _plot_dice(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = results["per_image"]
    labels = {int(k): v for k, v in results.get("labels", {}).items()}
    foreground = [c for c in sorted(labels) if c != 0]
    order = sorted(
        range(len(entries)),
        key=lambda i: (entries[i].get("mean_foreground_dice") is None, entries[i].get("mean_foreground_dice") or 0.0),
    )
    width = min(16.0, max(6.0, 0.25 * len(entries) + 2))
    figure, axis = plt.subplots(figsize=(width, 4), dpi=100)
    x = np.arange(len(order))
    means = [entries[i].get("mean_foreground_dice") for i in order]
    axis.bar(x, [100 * (v or 0.0) for v in means], color="tab:blue", alpha=0.6, label="mean foreground Dice")
    if len(foreground) > 1:
        for c in foreground[:10]:
            values = [
                entries[i]["per_class"].get(c, entries[i]["per_class"].get(str(c), {})).get("dice") for i in order
            ]
            axis.plot(
                x, [np.nan if v is None else 100 * v for v in values], "o", markersize=3, label=labels.get(c, str(c))
            )
    dataset_mean = results.get("mean_foreground", {}).get("dataset", {}).get("dice")
    if dataset_mean is not None:
        axis.axhline(
            100 * dataset_mean, color="tab:red", linestyle="--", label=f"dataset Dice {100 * dataset_mean:.2f}%"
        )
    if len(order) <= 40:
        axis.set_xticks(x)
        axis.set_xticklabels([str(entries[i].get("id", i)) for i in order], rotation=90, fontsize=7)
    else:
        axis.set_xlabel("images, sorted by Dice")
    axis.set_ylabel("Dice (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"per-image Dice ({len(entries)} images)")
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


# -- evaluation data ---------------------------------------------------------------------------------------------------
def load_evaluation_data(
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    split: str | None = None,
    images: str | None = None,
    masks: str | None = None,
    fov_masks: str | None = None,
    options: Mapping[str, Any] | None = None,
    skip_bad: bool = False,
    adapter_labels: Mapping | None = None,
):
    """``(dataset, id2label, name)``: a named dataset (``dataset``/``data_root``/``split``, default split test where
    the dataset has one; ``options`` are its variants) or a plain folder pair (``images`` with ``masks``)."""
    if images or masks:
        if dataset:
            raise DataError("give either a dataset or an images/masks folder pair, not both")
        if not (images and masks):
            raise DataError("plain folder evaluation needs both an images folder and a masks folder")
        loaded = _folder_dataset(images, masks, fov_masks, adapter_labels, skip_bad, options)
        name = f"{Path(images).name} + {Path(masks).name}"
    elif dataset:
        loaded = load_dataset_split(dataset, data_root, split, skip_bad=skip_bad, default="test", options=options)
        chosen = split
        if chosen is None:
            spec = DATASETS.get(dataset)
            chosen = "test" if spec is not None and "test" in spec.split_names else None
        name = dataset + (f" ({chosen})" if chosen else "")
        if options:
            name += " [" + ", ".join(f"{k}={v}" for k, v in options.items()) + "]"
    else:
        raise DataError("no evaluation data: give a dataset with its data root, or an images and a masks folder")
    try:
        id2label = label_info(loaded)
    except ValueError:
        id2label = None
    return loaded, id2label, name


def _folder_dataset(images, masks, fov, adapter_labels, skip_bad, options=None):
    images, masks = Path(images).expanduser().resolve(), Path(masks).expanduser().resolve()
    for path, what in ((images, "images"), (masks, "masks")):
        if not path.is_dir():
            raise DataError(f"{path}: the {what} folder does not exist", path)
    parts = [images, masks] + ([Path(fov).expanduser().resolve()] if fov else [])
    root = Path(os.path.commonpath(parts))
    kwargs = dict(options or {})
    if not (root / "id2label.json").is_file() and adapter_labels and len(adapter_labels) > 2:
        # multi-class masks store class ids: read them as such, named like the adapter's classes
        kwargs.update(label_map={i: i for i in range(len(adapter_labels))}, label_names=dict(adapter_labels))
    loaded = folder(root, images=str(images), masks=str(masks), fov=str(Path(fov).resolve()) if fov else None,
                    skip_bad=skip_bad, **kwargs)  # fmt: skip
    if isinstance(loaded, DatasetDict):
        loaded = next(iter(loaded.values()))
    return loaded
