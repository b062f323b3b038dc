"""``evaluate`` module for the LoSAM segmentation metrics (paper Eq. 3-7).

Load it offline with ``evaluate.load(losam_peft.metrics.EVALUATE_METRIC_PATH)``. The numbers are
computed by :mod:`losam_peft.metrics` (the same code as ``segmentation_metrics`` and
``SegmentationMetricAccumulator``); see that module for the definitions, the result layout and
the rule for undefined (0/0) ratios.
"""

import datasets
import evaluate
import numpy as np

from losam_peft.metrics import SegmentationMetricAccumulator

_DESCRIPTION = """\
Per-class precision (P), recall (REC), Dice, bookmaker informedness (BM = recall + specificity - 1),
IoU and specificity of semantic segmentation label maps, one-vs-rest from TP/FP/TN/FN, both over
all evaluated pixels of the dataset (micro) and as the mean over images. Pixels whose reference is
`ignore_index`, or outside the optional field-of-view mask `fov`, are not evaluated. A ratio with a
zero denominator is undefined: it is reported as None and left out of the per-image mean (the
number of images used is reported).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: label maps, a list of 2-D integer arrays/tensors (sizes may differ) or an
        (N, H, W) array/tensor. Values in [0, num_labels).
    references: ground-truth label maps, same structure and shapes. Values in [0, num_labels) or
        `ignore_index`.
    fov (optional, in add/add_batch/compute): field-of-view masks, same structure (non-zero =
        inside), a list may hold None for "whole image". Stored as booleans.
    num_labels (int, compute): number of classes including the background (class 0).
    ignore_index (int or None, compute, default 255): reference value that is not evaluated.
    id2label (dict, compute, optional): {class id: name}.
    per_image (bool, compute, default True): include per-image values (nested form only).
    nested (bool, compute, default False): return the nested dict described below instead of the flat one.
Returns:
    By default a flat dict, like evaluate's own metrics: `dice_<class name>`, `iou_<class name>`, … over all
    evaluated pixels, `mean_dice`, `mean_iou`, … over the foreground classes, `image_mean_dice`, … (means over
    images), `num_images`, `num_pixels`. With `nested=True`, the dict of `losam_peft.metrics.segmentation_metrics`: `per_class` (dataset/micro values
    keyed by class id), `per_image_mean`, `mean_foreground`, `by_name`, `per_image`, ...
    Values are fractions (0..1); undefined ratios are None.
Examples:
    >>> import evaluate, numpy as np
    >>> from losam_peft.metrics import EVALUATE_METRIC_PATH
    >>> metric = evaluate.load(EVALUATE_METRIC_PATH)
    >>> metric.add_batch(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 1]])])
    >>> round(metric.compute(num_labels=2)["per_class"][1]["dice"], 4)
    0.8
"""

_CITATION = """\
@article{qiu2023learnable,
  title={Learnable Ophthalmology SAM},
  author={Qiu, Zhongxi and Hu, Yan and Li, Heng and Liu, Jiang},
  journal={arXiv preprint arXiv:2304.13425},
  year={2023}
}
"""

# Labels are stored as int16: room for ignore_index 255 or -100 and up to 32767 classes at two
# bytes per pixel. Values that do not fit are refused in add/add_batch instead of wrapping.
_LABEL_DTYPE = "int16"
_LABEL_MIN, _LABEL_MAX = -(2**15), 2**15 - 1


def _is_tensor(x):
    return hasattr(x, "detach") and hasattr(x, "cpu")


def _to_numpy(x):
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _label_list(x, what):
    """Normalise a batch of label maps to a list of 2-D int16 numpy arrays."""
    if x is None:
        raise ValueError(f"{what} is None")
    if _is_tensor(x) or isinstance(x, np.ndarray):
        arr = _to_numpy(x)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"{what} must be (N, H, W) or a list of (H, W) label maps, got shape {arr.shape}")
        items = list(arr)
    else:
        items = [_to_numpy(item) for item in x]
    if not items:
        raise ValueError(f"{what} is empty (no images)")
    out = []
    for i, a in enumerate(items):
        if a.ndim != 2:
            raise ValueError(f"{what}[{i}] must be a 2-D (H, W) label map, got shape {a.shape}")
        if a.dtype == bool:
            a = a.astype(np.uint8)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(
                f"{what}[{i}] must be an integer label map, got dtype {a.dtype}; "
                "for logits/probabilities take the argmax over the class dimension first"
            )
        if a.size and (int(a.min()) < _LABEL_MIN or int(a.max()) > _LABEL_MAX):
            raise ValueError(f"{what}[{i}] holds values outside the int16 range used for storage")
        out.append(a.astype(_LABEL_DTYPE, copy=False))
    return out


def _fov_list(fov, n):
    if fov is None:
        return [None] * n
    if _is_tensor(fov) or isinstance(fov, np.ndarray):
        arr = _to_numpy(fov)
        if arr.ndim == 2:
            return [arr != 0] * n
        if arr.ndim != 3:
            raise ValueError(f"fov must be (N, H, W) or a list of (H, W) masks, got shape {arr.shape}")
        items = list(arr)
    else:
        items = list(fov)
    if len(items) != n:
        raise ValueError(f"fov holds {len(items)} masks but there are {n} images")
    return [None if m is None else (_to_numpy(m) != 0) for m in items]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LosamSegmentation(evaluate.Metric):
    """Per-class P / REC / Dice / BM / IoU of segmentation label maps (see losam_peft.metrics)."""

    def _info(self):
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value(_LABEL_DTYPE))),
                    "references": datasets.List(datasets.List(datasets.Value(_LABEL_DTYPE))),
                    "fov": datasets.List(datasets.List(datasets.Value("bool"))),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2304.13425"],
        )
        # Read back as numpy arrays (one per image) rather than nested Python lists. MetricInfo
        # refuses format="numpy" for list features at construction, but the reading path handles
        # variable-sized 2-D lists fine, so set it afterwards.
        info.format = "numpy"
        return info

    # fov is an optional input: fill it with None ("whole image") when it is not given.
    def add_batch(self, *, predictions=None, references=None, fov=None, **kwargs):
        """Add a batch of label maps (list of (H, W) or (N, H, W)), with optional ``fov`` masks."""
        preds = _label_list(predictions, "predictions")
        refs = _label_list(references, "references")
        if len(preds) != len(refs):
            raise ValueError(f"got {len(preds)} predictions but {len(refs)} references")
        for i, (p, r) in enumerate(zip(preds, refs)):
            if p.shape != r.shape:
                raise ValueError(f"image {i}: predictions shape {p.shape} differs from references shape {r.shape}")
        fovs = _fov_list(fov, len(preds))
        for i, (m, p) in enumerate(zip(fovs, preds)):
            if m is not None and m.shape != p.shape:
                raise ValueError(f"image {i}: fov shape {m.shape} does not match the prediction/reference shape {p.shape}")
        return super().add_batch(predictions=preds, references=refs, fov=fovs, **kwargs)

    def add(self, *, prediction=None, reference=None, fov=None, **kwargs):
        """Add one (H, W) prediction and reference, with an optional ``fov`` mask."""
        if kwargs:
            raise ValueError(f"Bad inputs for evaluation module: {list(kwargs)}")
        return self.add_batch(predictions=[prediction], references=[reference], fov=None if fov is None else [fov])

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metrics of everything added (plus ``predictions``/``references`` if given).

        Keyword arguments: ``fov`` (with predictions/references), ``num_labels`` (required),
        ``ignore_index`` (default 255), ``id2label``, ``per_image`` (default True).
        """
        if kwargs.get("num_labels") is None:
            # checked before evaluate finalises its cache, so the added data stay usable
            raise ValueError("compute() needs num_labels (number of classes including the background)")
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references, fov=kwargs.pop("fov", None))
        else:
            kwargs.pop("fov", None)
        return super().compute(**kwargs)

    def _compute(
        self, predictions, references, fov, num_labels=None, ignore_index=255, id2label=None, per_image=True,
        nested=False,
    ):
        if num_labels is None:
            raise ValueError("compute() needs num_labels (number of classes including the background)")
        if len(predictions) == 0:
            raise ValueError("no images were added: nothing to compute")
        preds = [np.asarray(p) for p in predictions]
        refs = [np.asarray(r) for r in references]
        fovs = None
        if fov is not None and any(m is not None for m in fov):
            fovs = [None if m is None else np.asarray(m, dtype=bool) for m in fov]
        acc = SegmentationMetricAccumulator(num_labels, ignore_index=ignore_index)
        acc.update(preds, refs, fov=fovs)
        results = acc.compute(id2label=id2label, per_image=per_image and nested)
        return results if nested else flat_results(results)


def flat_results(results):
    """One level, like evaluate's own metrics: ``dice_<class>`` … over all evaluated pixels for every foreground
    class, ``mean_<metric>`` their mean, ``image_mean_<metric>`` the mean over images, plus ``num_images`` and
    ``num_pixels``. Undefined ratios are None."""
    flat = {"num_images": results["num_images"], "num_pixels": results["num_pixels"]}
    names = results["metrics"]
    for key, entry in results["per_class"].items():
        if int(key) == 0:
            continue
        label = str(entry.get("name") or key).strip().replace(" ", "_")
        for metric in names:
            flat[f"{metric}_{label}"] = entry.get(metric)
    for metric in names:
        flat[f"mean_{metric}"] = results["mean_foreground"]["dataset"].get(metric)
        flat[f"image_mean_{metric}"] = results["mean_foreground"]["image"].get(metric)
    return flat
