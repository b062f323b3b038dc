"""Datasets already in ``datasets`` form, accepted wherever a named dataset with its data root is.

Three sources: a folder written by ``losam data convert`` (or any ``save_to_disk`` folder), a folder of data files
that ``datasets.load_dataset`` reads (``convert(..., format="parquet")`` writes one), and a Hub dataset id
(``owner/name``). Each needs an image column and a mask column (``label``, ``mask``, ``annotation``,
``segmentation`` or ``gt``, as ``datasets.Image``); the mask column becomes ``label``, an ``id`` column is added
where there is none (``<split>-00000``…), and the label names are read from, in order: the label feature and
``info.description`` (:func:`~losam_peft.data.loaders.label_info`), ``id2label.json`` in the folder or the Hub
repository, and the ``id2label`` entry of the dataset card. A dataset without names loads with none
(:func:`dataset_labels` gives ``None``); the caller decides (``--labels``/``--num-labels``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..constants import CARD_NAME
from ..errors import DataError, DatasetLayoutError, HubError, LoSamError, LoSamValueError
from .loaders import (
    _SPLIT_ALIASES,
    CARD_LABELS_KEY,
    LABELS_FILE,
    _read_description,
    attach_label_names,
    label_info,
    labels_from_payload,
    read_labels_file,
    registry_name,
)

__all__ = ["MASK_COLUMNS", "dataset_labels", "load_saved", "saved_kind", "saved_provenance"]

#: Columns read as the mask, in this order of preference.
MASK_COLUMNS = ("label", "mask", "annotation", "segmentation", "gt")
_IMAGE_COLUMNS = ("image", "img")
#: ``owner/name``: what a Hub dataset id looks like (a bare name would be taken for a misspelt dataset name)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")


def saved_kind(name: str | None) -> str | None:
    """``"local"`` (an existing path), ``"hub"`` (looks like ``owner/name``) or ``None`` (a registry name, ``folder``
    or nothing this module reads)."""
    if not name or str(name).lower() == "folder" or registry_name(str(name)) is not None:
        return None
    if Path(str(name)).expanduser().exists():
        return "local"
    if _HUB_ID.fullmatch(str(name)):
        return "hub"
    return None


def _load_local(path: Path):
    import datasets

    if path.is_file():
        raise DatasetLayoutError(f"{path}: is a file; give the folder of a saved dataset", path)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            return datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure of a damaged folder, named
            raise DataError(f"{path}: not a readable save_to_disk folder ({type(exc).__name__}: {exc})", path) from exc
    has_files = any(p.suffix.lower() in _DATA_FILE_SUFFIXES and p.name != LABELS_FILE for p in path.rglob("*"))
    if not has_files:
        hint = " (it has images/: train on it with --train-dir, or --dataset folder --data-root)" if (
            path / "images"
        ).is_dir() else ""
        raise DatasetLayoutError(
            f"{path}: not a saved dataset: no save_to_disk files (dataset_dict.json, state.json) and no data files "
            f"({', '.join(_DATA_FILE_SUFFIXES)}){hint}",
            path,
        )
    try:
        return datasets.load_dataset(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: datasets could not read its data files ({type(exc).__name__}: {exc})", path) from exc


def _load_hub(repo_id: str):
    import datasets

    try:
        return datasets.load_dataset(repo_id)
    except LoSamError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, not found, no access: one clear message
        raise HubError(
            f"{repo_id}: could not load this Hub dataset ({type(exc).__name__}: {_first_line(exc)}). "
            "It is not a local folder, so it was taken for a Hub dataset id: check the id (and access with "
            "HF_TOKEN), or, offline, give a local copy (a folder written by `losam data convert` or save_to_disk)"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _hub_labels(repo_id: str) -> dict[int, str] | None:
    """Label names kept with a Hub dataset: its ``id2label.json``, else the card's ``id2label``."""
    try:
        from huggingface_hub import hf_hub_download

        return read_labels_file(hf_hub_download(repo_id, LABELS_FILE, repo_type="dataset"))
    except Exception:  # noqa: BLE001 - no such file (or offline): try the card
        pass
    try:
        from huggingface_hub import DatasetCard

        payload = DatasetCard.load(repo_id, repo_type="dataset").data.to_dict().get(CARD_LABELS_KEY)
        return labels_from_payload(payload) if payload else None
    except Exception:  # noqa: BLE001 - no card: no names
        return None


def _local_labels(path: Path) -> dict[int, str] | None:
    if (path / LABELS_FILE).is_file():
        return read_labels_file(path / LABELS_FILE)
    card = path / CARD_NAME
    if card.is_file():
        from huggingface_hub import DatasetCard

        try:
            payload = DatasetCard.load(card).data.to_dict().get(CARD_LABELS_KEY)
        except Exception:  # noqa: BLE001 - a card without metadata
            payload = None
        if payload:
            try:
                return labels_from_payload(payload)
            except LoSamValueError as exc:
                raise DataError(f"{card}: {CARD_LABELS_KEY}: {exc}", card) from None
    return None


def _feature_is_image(feature) -> bool:
    from datasets import Image

    return isinstance(feature, Image)


def _standardise(ds, source: str, split_name: str | None):
    """One split with ``image``, ``label`` (the mask), optional ``fov`` and an ``id`` column."""
    features = ds.features
    image = next((c for c in _IMAGE_COLUMNS if c in features), None)
    if image is None or not _feature_is_image(features[image]):
        raise DataError(
            f"{source}: no image column (an `image` column of datasets.Image); columns: {list(features)}"
        )
    masks = [c for c in MASK_COLUMNS if c in features and _feature_is_image(features[c])]
    if not masks:
        raise DataError(
            f"{source}: no mask column: a segmentation dataset needs one of {', '.join(MASK_COLUMNS)} holding mask "
            f"images (datasets.Image); columns: "
            + ", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())
        )
    mask = masks[0]
    if image != "image":
        ds = ds.rename_column(image, "image")
    if mask != "label":
        if "label" in ds.features:  # e.g. an image-level ClassLabel next to the masks
            ds = ds.rename_column("label", "image_label")
        ds = ds.rename_column(mask, "label")
    if "fov" in ds.features and not _feature_is_image(ds.features["fov"]):
        ds = ds.rename_column("fov", "fov_value")
    if "id" not in ds.features:
        prefix = split_name or "sample"
        ds = ds.add_column("id", [f"{prefix}-{i:05d}" for i in range(len(ds))])
    return ds


def _name_labels(ds, names: dict[int, str] | None):
    try:
        label_info(ds)
        return ds
    except LoSamValueError:
        pass
    return attach_label_names(ds, names) if names else ds


def _only_split(where: str, only: str, default: str | None) -> str:
    """The one split of a dataset, used when ``default`` is absent; never a training split standing in for the
    validation or test data a caller asked for by default."""
    if default not in (None, "train") and only.lower() in ("train", "training"):
        raise DatasetLayoutError(
            f"{where}: holds only the split {only!r}, no {default!r} split; name the split to use it anyway"
        )
    return only


def load_saved(source: str, split: str | None = None, *, default: str | None = None, options: Mapping | None = None):
    """One split (a ``datasets.Dataset``) of a saved dataset folder or Hub dataset id (see the module docstring).

    ``split``: the split asked for; without one, ``default`` where the dataset has that split, else its only split
    (several splits and no choice is an error listing them). ``options`` (dataset options) have no meaning for a
    dataset that is already converted and are refused.
    """
    from datasets import DatasetDict, IterableDatasetDict

    kind = saved_kind(source)
    if kind is None:
        raise LoSamValueError(f"{source!r} is neither an existing folder nor a Hub dataset id (owner/name)")
    if options:
        raise LoSamValueError(
            f"{source}: a saved dataset takes no dataset options (got {', '.join(sorted(options))}); they apply "
            "when a download is read (losam data convert --dataset NAME --data-root ROOT ...)"
        )
    path = Path(source).expanduser().resolve() if kind == "local" else None
    loaded = _load_local(path) if path is not None else _load_hub(source)
    where = str(path) if path is not None else source

    if isinstance(loaded, (DatasetDict, IterableDatasetDict)):
        splits = list(loaded)
        if not splits:
            raise DatasetLayoutError(f"{where}: the dataset holds no splits", path)
        chosen = None
        if split is not None and split != "all":
            wanted = str(split)
            alias = _SPLIT_ALIASES.get(wanted.lower(), wanted.lower())
            chosen = next((s for s in splits if s in (wanted, alias) or s.lower() in (wanted.lower(), alias)), None)
            if chosen is None:
                raise DatasetLayoutError(f"{where}: no split {split!r}; its splits are {splits}", path)
        elif split == "all":
            raise LoSamValueError(f"{where}: choose one of its splits {splits} (\"all\" is for dataset downloads)")
        elif default is not None and default in splits:
            chosen = default
        elif len(splits) == 1:
            chosen = _only_split(where, splits[0], default)
        else:
            raise DataError(f"{where} has splits {splits}; choose one")
        ds, split_name = loaded[chosen], chosen
    else:
        ds = loaded
        split_name = _read_description(ds.info).get("split") if ds.info else None
        split_name = split_name if split_name not in (None, "all") else None
        if split is not None and split != "all" and split_name is not None and split != split_name:
            raise DatasetLayoutError(f"{where}: holds only the split {split_name!r}, not {split!r}", path)
        if split is not None and split != "all" and split_name is None:
            raise DatasetLayoutError(f"{where}: has no splits; leave out the split (asked for {split!r})", path)
        if split is None and split_name is not None:
            _only_split(where, split_name, default)
    ds = _standardise(ds, where, split_name)
    names = None
    try:
        label_info(ds)
    except LoSamValueError:
        names = _local_labels(path) if path is not None else _hub_labels(source)
    return _name_labels(ds, names)


def dataset_labels(dataset) -> dict[int, str] | None:
    """The label names a (saved) dataset carries, ``None`` when it has none."""
    try:
        return label_info(dataset)
    except LoSamValueError:
        return None


def saved_provenance(dataset) -> dict[str, Any]:
    """What the package recorded about a dataset (``dataset``, ``modality``, ``task``, ``saved_source``…)."""
    return dict(_read_description(dataset.info)) if getattr(dataset, "info", None) else {}
