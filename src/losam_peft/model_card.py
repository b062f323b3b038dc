"""Model cards (``README.md``) for LoSAM adapters, built with huggingface_hub's ``ModelCard``/``ModelCardData``.

The card's YAML header carries ``library_name: peft``, ``base_model``, ``pipeline_tag: image-segmentation``, the
tags ``losam``, ``medical``, ``ophthalmology``, ``image-segmentation``, the modality and the task, the training
datasets and a ``model-index`` with the last evaluation (per class Dice, IoU, precision, recall and BM, in
percent). The body comes from a Jinja template chosen by the adapter's modality and task
(``model_cards/*.md``: fundus vessels, OCTA vessels, fundus lesions, OCT layers, and a generic fallback) and states
the intended use, that the model is not a medical device, its known limits and how to load it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic import atomic_write_text
from .constants import CARD_NAME, __version__
from .data.specs import DATASETS
from .data.tags import normalise_modality, normalise_task

TEMPLATES_DIR = Path(__file__).parent / "model_cards"
#: What the loading snippets say until the card is pushed (``hub.push_adapter`` puts the repository id in).
ADAPTER_PLACEHOLDER = "path/to/adapter"
BASE_TAGS = ("losam", "medical", "ophthalmology", "image-segmentation")

TEMPLATES = {
    ("fundus", "vessels"): "fundus_vessels.md",
    ("octa", "vessels"): "octa_vessels.md",
    ("fundus", "lesions"): "fundus_lesions.md",
    ("oct", "layers"): "oct_layers.md",
}
GENERIC_TEMPLATE = "generic.md"
_MODALITY_NAMES = {
    "fundus": "colour fundus photographs",
    "octa": "OCT angiography (OCTA) en-face images",
    "oct": "OCT B-scans",
}
_DATASET_NAMES = {
    "drive": "DRIVE",
    "stare": "STARE",
    "chase": "CHASE_DB1",
    "chasedb1": "CHASE_DB1",
    "chase_db1": "CHASE_DB1",
    "fives": "FIVES",
    "hrf": "HRF",
    "rose": "ROSE",
    "rose-1": "ROSE-1",
    "rose-2": "ROSE-2",
    "octa-500": "OCTA-500",
    "octa_500": "OCTA-500",
    "idrid": "IDRiD",
    "aroi": "AROI",
    "synthetic": "synthetic images",
}
_METRICS = (  # (key, pretty name, model-index metric type)
    ("dice", "Dice", "dice"),
    ("iou", "IoU", "iou"),
    ("precision", "Precision", "precision"),
    ("recall", "Recall", "recall"),
    ("bm", "BM", "bookmaker_informedness"),
    ("specificity", "Specificity", "specificity"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def template_path(modality: str | None, task: str | None) -> Path:
    """The template for a modality/task pair (e.g. ``fundus``/``vessels``), or the generic one."""
    name = TEMPLATES.get((normalise_modality(modality), normalise_task(task)), GENERIC_TEMPLATE)
    return TEMPLATES_DIR / name


def is_hub_id(value: str | None) -> bool:
    """True for strings shaped like a Hub repository id (``owner/name``) that are not an existing local path."""
    if not value:
        return False
    value = str(value)
    return bool(_HUB_ID.match(value)) and not os.path.exists(value)


# -- pieces of the card ----------------------------------------------------------------------------------------------
def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if value != value:  # NaN
        return None
    return value


def _percent(value: float) -> float:
    """Fractions are shown in percent; values already in percent (|v| > 1) are kept."""
    return round(value * 100.0 if abs(value) <= 1.0 else value, 2)


def metric_rows(metrics: Mapping | None) -> list[dict[str, Any]]:
    """Foreground classes of an evaluation with their metrics in percent: ``[{"id", "name", "dice", ...}]``."""
    if not metrics:
        return []
    per_class = metrics.get("per_class") or {}
    if isinstance(per_class, (list, tuple)):
        per_class = {entry.get("id", index): entry for index, entry in enumerate(per_class)}
    rows = []
    for key, entry in per_class.items():
        if not isinstance(entry, Mapping):
            continue
        try:
            class_id = int(entry.get("id", key))
        except (TypeError, ValueError):
            class_id = None
        name = str(entry.get("name", key))
        if class_id == 0 or name.lower() == "background":
            continue
        row: dict[str, Any] = {"id": class_id, "name": name}
        for metric, _, _ in _METRICS:
            value = _number(entry.get(metric))
            if value is not None:
                row[metric] = _percent(value)
        if len(row) > 2:
            rows.append(row)
    rows.sort(key=lambda r: (r["id"] is None, r["id"] if r["id"] is not None else 0, r["name"]))
    return rows


def _dataset_name(dataset: str) -> str:
    return _DATASET_NAMES.get(dataset.lower(), dataset)


def _results_markdown(rows: list[dict], metrics: Mapping | None) -> str:
    if not rows:
        return (
            "No evaluation was recorded when this card was written. Evaluate the adapter on images with reference "
            "masks (e.g. `losam evaluate`) before relying on it."
        )
    used = [(key, pretty) for key, pretty, _ in _METRICS if any(key in row for row in rows)]
    dataset = metrics.get("dataset")
    split = metrics.get("split")
    count = metrics.get("num_images")
    where = (_dataset_name(str(dataset)) if dataset else "images given by path (no dataset name was recorded)") + (
        f", {split} split" if split else ""
    )
    if isinstance(count, int):
        where += f", {count} image{'s' if count != 1 else ''}"
    lines = [
        f"Last evaluation: {where}. Values in percent, per target class (Eq. 3-7 of the paper; "
        "BM = recall + specificity - 1).",
        "",
        "| class | " + " | ".join(pretty for _, pretty in used) + " |",
        "|---|" + "---:|" * len(used),
    ]
    for row in rows:
        cells = [f"{row[key]:.2f}" if key in row else "–" for key, _ in used]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _training_markdown(training: Mapping | None) -> tuple[str, str]:
    """(markdown, one-line shots description)."""
    if not training:
        return "No training record was passed when this card was written.", ""
    shots = training.get("shots")
    if isinstance(shots, (str, os.PathLike)):
        shots = [shots]
    shots = [str(s) for s in shots] if shots else []
    if len(shots) == 1:
        shots_line = f"one-shot: trained on a single labelled image, `{shots[0]}`"
    elif shots:
        shown = ", ".join(f"`{s}`" for s in shots[:20]) + (f" and {len(shots) - 20} more" if len(shots) > 20 else "")
        shots_line = f"few-shot: trained on {len(shots)} labelled images ({shown})"
    else:
        shots_line = ""
    labels = {
        "preset": "recipe preset",
        "steps": "optimizer steps",
        "epochs": "epochs",
        "batch_size": "batch size",
        "learning_rate": "learning rate",
        "image_size": "input size (pixels)",
        "seed": "seed",
        "device": "device",
        "dtype": "precision",
        "seconds": "training time (s)",
    }
    lines = []
    if shots:
        shown = ", ".join(f"`{s}`" for s in shots[:50]) + (f" and {len(shots) - 50} more" if len(shots) > 50 else "")
        lines.append(f"- training image{'s' if len(shots) > 1 else ''} ({len(shots)}): {shown}")
    for key, label in labels.items():
        value = training.get(key)
        if value is None or value == "":
            continue
        if key == "seconds" and _number(value) is not None:
            value = f"{float(value):.1f}"
        lines.append(f"- {label}: {value}")
    selection = training.get("selection")
    if isinstance(selection, Mapping):
        if selection.get("by") == "validation":
            lines.append(
                f"- saved step: {selection.get('step')}, the best mean foreground Dice on the validation data "
                f"({selection.get('source', 'validation data')}); the evaluation results below never chose it"
            )
        else:
            lines.append(f"- saved step: the final step ({selection.get('step')}); no validation data chose it")
    for key, value in training.items():
        if key in labels or key == "shots" or value is None or isinstance(value, (dict, list, tuple)):
            continue
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    return "\n".join(lines) if lines else "No training details were recorded.", shots_line


#: the families of encoder an adapter may sit on, by the class of its blocks (``LoSamConfig.encoder_block``)
_ENCODER_FAMILIES = {
    "SamVisionLayer": "SAM",
    "Dinov2Layer": "DINOv2",
    "Dinov2WithRegistersLayer": "DINOv2 (with registers)",
    "ViTLayer": "ViT",
    "ViTMAELayer": "ViT-MAE",
}
_ENCODER_SIZES = {(384, 12): "ViT-S", (768, 12): "ViT-B", (1024, 24): "ViT-L", (1280, 32): "ViT-H", (1536, 40): "ViT-g"}


def encoder_name(peft_config) -> str | None:
    """``"SAM ViT-B"``, ``"DINOv2 ViT-L"`` ...: the encoder an adapter was made for, from its recorded block class and
    size (adapters saved before the block class was recorded are SAM's)."""
    block = getattr(peft_config, "encoder_block", None) or "SamVisionLayer"
    family = _ENCODER_FAMILIES.get(block, block)
    size = _ENCODER_SIZES.get(
        (getattr(peft_config, "encoder_hidden_size", None), getattr(peft_config, "encoder_num_layers", None))
    )
    if size is None:
        return None if block == "SamVisionLayer" else f"a {family} image encoder"
    return f"{family} {size}"


def dataset_lines(datasets) -> list[str]:
    """One line per training dataset: its name, and for the datasets the package knows their licence and source."""
    lines = []
    for name in datasets or ():
        spec = DATASETS.get(str(name).lower())
        if spec is None:
            hub = f" ([Hub](https://huggingface.co/datasets/{name}))" if is_hub_id(str(name)) else ""
            lines.append(f"- {_dataset_name(str(name))}{hub}: licence as stated by its source")
            continue
        licence = spec.license_name or spec.license
        if spec.license_name and spec.license and spec.license != "other":
            licence = f"{spec.license_name} ({spec.license})"
        source = f", {spec.url}" if spec.url else ""
        lines.append(f"- {_dataset_name(spec.name)}: licence {licence}{source}")
    return lines


def _labels_markdown(id2label: Mapping | None, num_labels: int | None) -> str:
    if not id2label:
        if not num_labels:
            return "The class names were not recorded."
        id2label = {i: ("background" if i == 0 else f"class {i}") for i in range(int(num_labels))}
    lines = ["| id | class |", "|---:|---|"]
    for key in sorted(id2label, key=lambda k: int(k)):
        lines.append(f"| {int(key)} | {id2label[key]} |")
    return "\n".join(lines)


def _eval_results(rows, metrics, datasets, model_name) -> list[EvalResult]:
    if not rows:
        return []
    dataset = str(metrics.get("dataset") or (datasets[0] if datasets else "custom"))
    split = metrics.get("split")
    results = []
    for row in rows:
        for key, pretty, metric_type in _METRICS:
            if key not in row:
                continue
            results.append(
                EvalResult(
                    task_type="image-segmentation",
                    task_name="Semantic segmentation",
                    dataset_type=dataset,
                    dataset_name=_dataset_name(dataset),
                    dataset_split=str(split) if split else None,
                    metric_type=metric_type,
                    metric_name=f"{pretty} {row['name']} (%)",
                    metric_config=row["name"],
                    metric_value=row[key],
                )
            )
    return results


def _tags(modality: str | None, task: str | None, extra) -> list[str]:
    tags = list(BASE_TAGS)
    for value in (modality, task, *(extra or ())):
        if value and value not in tags:
            tags.append(value)
    return tags


# -- the card --------------------------------------------------------------------------------------------------------
def build_model_card(
    peft_config,
    *,
    base_model: str | None,
    metrics: Mapping | None = None,
    training: Mapping | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of a LoSAM adapter.

    Args:
        peft_config: the adapter's ``LoSamConfig`` (labels, modality, task, encoder size are read from it).
        base_model: the base SAM checkpoint; a Hub id goes into the YAML ``base_model`` field, a local path only
            into the text (the Hub accepts repository ids there only). ``None``: the config's
            ``base_model_name_or_path``.
        metrics: the last evaluation, ``{"per_class": {"1": {"name": "vessel", "dice": 0.81, ...}}, "dataset":
            "drive", "split": "test"}`` (fractions; the card shows percent). Missing keys are tolerated.
        training: ``{"shots": [...], "steps": ..., "epochs": ..., "preset": ..., "image_size": ..., "seconds": ...,
            "device": ...}``.
        datasets: Hub dataset ids the adapter was trained on (the YAML ``datasets`` field).
        repo_id: the Hub repository the card is for; the loading snippets use it (default: a placeholder that
            ``losam_peft.hub.push_adapter`` replaces with the repository id).
        license: the card's ``license`` (default: none is claimed).
        tags: extra tags.
        template: a template to use instead of the one chosen by modality and task.
    """
    modality = normalise_modality(getattr(peft_config, "modality", None))
    task = normalise_task(getattr(peft_config, "task", None))
    if base_model is None:
        base_model = getattr(peft_config, "base_model_name_or_path", None)
    base_model = str(base_model) if base_model else None
    hub_base = base_model if is_hub_id(base_model) else None
    id2label = getattr(peft_config, "id2label", None) or None
    num_labels = getattr(peft_config, "num_labels", None)
    rows = metric_rows(metrics)
    datasets = [str(d) for d in datasets] if datasets else None
    # the YAML field links Hub datasets; the package's own dataset names (drive, fives, ...) are named with their
    # licences in the text instead
    hub_datasets = [d for d in datasets or () if d.lower() not in DATASETS and not d.startswith("synthetic")] or None
    model_name = repo_id.split("/")[-1] if repo_id else "-".join(["losam", *(v for v in (modality, task) if v)])
    eval_results = _eval_results(rows, metrics or {}, datasets, model_name)
    extra = {"base_model_relation": "adapter"} if hub_base else {}
    card_data = ModelCardData(
        library_name="peft",
        base_model=hub_base,
        pipeline_tag="image-segmentation",
        tags=_tags(modality, task, tags),
        datasets=hub_datasets,
        license=license,
        metrics=sorted({m for row in rows for m, _, _ in _METRICS if m in row}) or None,
        eval_results=eval_results or None,
        model_name=model_name if eval_results else None,
        **extra,
    )
    training_md, shots_line = _training_markdown(training)
    if datasets:
        training_md += "\n\nTraining data:\n" + "\n".join(dataset_lines(datasets))
    training_md += "\n\nLicence of this adapter: " + (
        f"`{license}`." if license else "none was stated when it was written (ask its author before reuse)."
    )
    adapter_ref = repo_id or ADAPTER_PLACEHOLDER
    encoder = encoder_name(peft_config)
    target = {"vessels": "retinal vessels", "lesions": "retinal lesions", "layers": "retinal layers"}.get(
        task, task or "retinal structures"
    )
    title = f"LoSAM adapter: {target} in {_MODALITY_NAMES.get(modality, modality or 'ophthalmic images')}"
    path = Path(template) if template is not None else template_path(modality, task)
    return ModelCard.from_template(
        card_data,
        template_path=str(path),
        title=title,
        modality=modality or "unspecified",
        modality_name=_MODALITY_NAMES.get(modality, modality or "ophthalmic images"),
        task=task or "unspecified",
        target=target,
        base_model_name=base_model or "not recorded",
        base_model_is_hub=bool(hub_base),
        encoder_name=encoder or "a SAM image encoder",  # (a name the templates use)
        encoder_hidden_size=getattr(peft_config, "encoder_hidden_size", None),
        encoder_num_layers=getattr(peft_config, "encoder_num_layers", None),
        reduction=getattr(peft_config, "reduction", None),
        image_size=getattr(peft_config, "image_size", None),
        labels_table=_labels_markdown(id2label, num_labels),
        results_section=_results_markdown(rows, metrics),
        has_results=bool(rows),
        training_section=training_md,
        shots_line=shots_line,
        adapter_ref=adapter_ref,
        package_version=__version__,
    )


def write_model_card(output_dir: str | os.PathLike, peft_config, **kwargs) -> Path:
    """Build the card (same arguments as :func:`build_model_card`) and write ``output_dir/README.md`` atomically."""
    card = build_model_card(peft_config, **{"base_model": None, **kwargs})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / CARD_NAME
    atomic_write_text(path, str(card))
    return path


# -- cards written by plain ``PeftModel.save_pretrained`` ------------------------------------------------------------
#: what a card of a LoSAM adapter carries whoever writes it (PEFT's own card, or :func:`write_model_card`)
PEFT_CARD_TAGS = ("losam", "image-segmentation", "medical", "ophthalmology")


def extend_peft_card(peft_model, output_dir: str | os.PathLike) -> None:
    """Give the card PEFT just wrote for a LoSAM adapter ``pipeline_tag: image-segmentation``, ``library_name:
    peft``, the ``losam`` tags and the base as ``base_model`` when it is a Hub id (a local path is dropped from the
    YAML, where the Hub accepts repository ids only)."""
    path = Path(output_dir) / CARD_NAME
    if not path.is_file():
        return
    config = getattr(peft_model, "active_peft_config", None)
    if str(getattr(config, "peft_type", "")).split(".")[-1] != "LOSAM":
        return
    card = ModelCard.load(path)
    card.data.library_name = "peft"
    card.data.pipeline_tag = card.data.pipeline_tag or "image-segmentation"
    base = getattr(config, "base_model_name_or_path", None) or card.data.get("base_model")
    tags = [t for t in (card.data.tags or []) if not str(t).startswith("base_model:")]
    if base and is_hub_id(str(base)):
        card.data.base_model = str(base)
        tags.append(f"base_model:adapter:{base}")
    else:
        card.data.base_model = None
    for extra in (*PEFT_CARD_TAGS, getattr(config, "modality", None), getattr(config, "task", None)):
        if extra and extra not in tags:
            tags.append(extra)
    card.data.tags = tags
    atomic_write_text(path, str(card))


def install_peft_card_extension() -> None:
    """Make ``PeftModel.create_or_update_model_card`` finish LoSAM adapters' cards with :func:`extend_peft_card`
    (other adapter types are left as PEFT writes them). Called once when the package is imported."""
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_losam_extended", False):
        return

    def create_or_update_model_card(self, output_dir: str):
        original(self, output_dir)
        extend_peft_card(self, output_dir)

    create_or_update_model_card._losam_extended = True
    create_or_update_model_card.__doc__ = original.__doc__
    PeftModel.create_or_update_model_card = create_or_update_model_card
