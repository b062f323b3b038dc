"""One engine for every dataset: ``load``, ``folder``, groups, K-shot drawing, ``convert``.

``load(name, root, split=None)`` returns a :class:`datasets.Dataset` (or a :class:`datasets.DatasetDict`
of the official splits) with columns ``image``, ``label`` (one channel, class ids), ``fov`` (255 inside
the field of view, 0 outside, like the synthetic data and DRIVE's own masks; ``None`` where the dataset
has none), ``id`` and the dataset's extra label columns and metadata. Images are referenced by path and
decoded lazily where their file is a plain 8-bit image; other images are re-encoded so that the image
processor decodes them to the pixels it decodes the original file to (8-bit after palette/CMYK/alpha
conversion, 16-bit and 12-bit data untouched as 16-bit PNGs, floats as 16-bit PNGs; see
``data.io.to_storable``). Labels are class-id PNGs produced by a generator, one sample at a time, and cached by ``datasets`` (keyed by the files' sizes and modification
times, the options and the split).

Label names convention (see :func:`attach_label_names`): the ``label`` column's ``datasets.Image``
feature carries ``id = '{"id2label": {"0": "background", ...}}'``, which survives ``save_to_disk``,
parquet, ``map``/``select``/``filter`` and the Hub's README features; ``Dataset.info.description`` holds
the same (plus provenance) as JSON under the key ``"losam_peft"``, which survives ``save_to_disk`` and
``cast_column``. :func:`label_info` reads either back (and also a top-level ``"id2label"`` in the
description, as ``synthetic.to_dataset`` writes it). :func:`convert` also writes them to ``id2label.json`` in its
output folder and to the ``id2label`` entry of the dataset card, which is where they survive on the Hub.

Missing files: pairing checks only the split asked for (a missing file of another split does not stop it), and
every image that lacks a file is named in one :class:`DatasetLayoutError` (its ``problems`` list holds them all).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import check_replaceable, mark_output
from ..constants import CARD_NAME, IGNORE_INDEX
from ..errors import LabelMismatchError, LoSamTypeError, LoSamValueError
from ..labels import normalise_id2label
from .io import (
    DEFAULT_MAX_PIXELS,
    DataError,
    DatasetLayoutError,
    SkippedFileWarning,
    binary_mask,
    derive_fov,
    encode_png,
    mask_to_classes,
    open_image,
    split_image_name,
    to_storable,
)
from .specs import DATASET_GROUPS, DATASETS, DatasetGroup, DatasetSpec, Files, Mask

__all__ = [
    "LABEL_NAMES_KEY",
    "attach_label_names",
    "convert",
    "dataset_card",
    "folder",
    "label_feature",
    "label_info",
    "load",
    "load_group",
    "select_shots",
]

#: Key of this package's JSON object in ``Dataset.info.description``.
LABEL_NAMES_KEY = "losam_peft"
#: Bumped whenever the rows a spec produces change, so cached datasets are regenerated.
_FORMAT_VERSION = 2  # 2: high-bit-depth and float images stored as the image decoder reads them
#: Options every dataset accepts (besides the spec's own variants, e.g. ``label=`` for OCTA-500).
ENGINE_OPTIONS = ("mask_threshold", "derive_fov", "max_pixels", "cache_dir")
#: Label masks are 8-bit PNGs of class ids with ``IGNORE_INDEX`` (255) left for "ignore": ids 0..254.
MAX_STORED_LABELS = IGNORE_INDEX
#: The ``folder`` loader's own options (its keyword arguments).
FOLDER_OPTIONS = ("images", "masks", "fov", "image_pattern", "mask_name", "fov_name", "label_map", "label_names")
_SPLIT_ALIASES = {"training": "train", "testing": "test", "val": "validation", "valid": "validation"}


# --------------------------------------------------------------------------------------------------
# Label names: stored in the label feature and in info.description
# --------------------------------------------------------------------------------------------------


def _normalise_id2label(id2label: Mapping | Sequence[str]) -> dict[int, str]:
    out = normalise_id2label(id2label)
    if not out:
        raise LoSamValueError("id2label is empty")
    return out


def label_feature(id2label: Mapping | Sequence[str]):
    """The ``datasets.Image`` feature of a ``label`` column carrying its label names."""
    from datasets import Image

    names = _normalise_id2label(id2label)
    return Image(id=json.dumps({"id2label": {str(k): v for k, v in names.items()}}, ensure_ascii=False))


def _read_description(info) -> dict:
    try:
        payload = json.loads(info.description or "")
    except (TypeError, ValueError):
        return {}
    if not isinstance(payload, dict):
        return {}
    if isinstance(payload.get(LABEL_NAMES_KEY), dict):
        return payload[LABEL_NAMES_KEY]
    return {"id2label": payload["id2label"]} if isinstance(payload.get("id2label"), dict) else {}


def _with_description(info, **entries) -> str:
    meta = _read_description(info)
    meta.update(entries)
    meta.setdefault("format", _FORMAT_VERSION)
    return json.dumps({LABEL_NAMES_KEY: meta}, ensure_ascii=False)


def attach_label_names(dataset, id2label: Mapping | Sequence[str], /, **metadata):
    """Return ``dataset`` (a ``Dataset`` or ``DatasetDict``) with its label names stored.

    ``id2label`` is ``{0: "background", 1: "vessel"}`` or a list of names. The names go into the
    ``label`` column's ``Image`` feature (``id`` as JSON) and, with ``metadata``, into
    ``info.description`` as JSON under ``"losam_peft"``. Use it for any dataset with the standard
    columns (the synthetic generator does).
    """
    from datasets import DatasetDict, Image

    if isinstance(dataset, DatasetDict):
        return DatasetDict({k: attach_label_names(v, id2label, **metadata) for k, v in dataset.items()})
    names = _normalise_id2label(id2label)
    feature = dataset.features.get("label")
    if isinstance(feature, Image):
        new = label_feature(names)
        dataset = dataset.cast_column("label", Image(mode=feature.mode, decode=feature.decode, id=new.id))
    else:  # still record the names (e.g. array labels), on a copy so the caller's info is untouched
        dataset = copy.deepcopy(dataset)
    dataset.info.description = _with_description(
        dataset.info, id2label={str(k): v for k, v in names.items()}, **metadata
    )
    return dataset


#: The label description written into a converted dataset's folder (and read back by ``folder`` and
#: ``load_saved``): ``{"0": "background", "1": "vessel"}``, the ``id2label.json`` of Hub segmentation datasets.
LABELS_FILE = "id2label.json"
#: Key of the same description in a converted dataset's card (YAML), where the Hub keeps it.
CARD_LABELS_KEY = "id2label"


def labels_from_payload(payload) -> dict[int, str]:
    """``id2label`` from a JSON label description: ``{"0": "background", ...}``, ``{"id2label": {...}}`` or a
    ``datasets.ClassLabel``-like ``{"names": [...]}`` / list of names."""
    if isinstance(payload, Mapping) and isinstance(payload.get("id2label"), (Mapping, list)):
        payload = payload["id2label"]
    elif isinstance(payload, Mapping) and isinstance(payload.get("names"), list):
        payload = payload["names"]
    return _normalise_id2label(payload)


def read_labels_file(path) -> dict[int, str]:
    """``id2label`` of a label description file (see :func:`labels_from_payload`); errors name the file."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON label description ({exc})", path) from None
    try:
        return labels_from_payload(payload)
    except LoSamValueError as exc:
        raise DataError(f"{path}: {exc}", path) from None


def labels_payload(id2label) -> dict[str, str]:
    """The JSON form of ``id2label`` written next to datasets: ``{"0": "background", "1": "vessel"}``."""
    return {str(k): v for k, v in _normalise_id2label(id2label).items()}


def label_info(dataset) -> dict[int, str]:
    """``id2label`` (``{0: "background", 1: "vessel"}``) of a loaded dataset (``Dataset``/``DatasetDict``/
    ``IterableDataset``), read from the label feature or, failing that, from ``info.description``."""
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        found = [label_info(v) for v in dataset.values()]
        if not found:
            raise LoSamValueError("empty DatasetDict: no label names")
        return found[0]
    features = dataset.features or {}
    feature = features.get("label") if hasattr(features, "get") else None
    raw = getattr(feature, "id", None)
    if raw:
        try:
            return _normalise_id2label(json.loads(raw)["id2label"])
        except (ValueError, KeyError, TypeError):
            pass
    meta = _read_description(dataset.info)
    if meta.get("id2label"):
        return _normalise_id2label(meta["id2label"])
    raise LoSamValueError(
        "this dataset carries no label names; load it with losam_peft.data.load or call "
        "losam_peft.data.attach_label_names(dataset, id2label)"
    )


# --------------------------------------------------------------------------------------------------
# Discovery: walk the root once, match images, pair masks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    reldir: str  # directory relative to the root's parent, posix, original case
    stem: str
    path: str


@dataclass
class _Sample:
    id: str
    split: str | None
    image: str
    masks: list[tuple[Mask, str | None]]
    fov: str | None
    extras: dict[str, tuple[Mask, str | None]]
    meta: dict[str, str]


@dataclass
class _Index:
    entries: list[_Entry]
    by_stem: dict[str, list[_Entry]] = field(default_factory=dict)


def _index(root: Path) -> _Index:
    base = root.parent
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        reldir = Path(dirpath).relative_to(base).as_posix()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            parts = split_image_name(name)
            if parts is not None:
                entries.append(_Entry(reldir, parts[0], os.path.join(dirpath, name)))
    by_stem: dict[str, list[_Entry]] = defaultdict(list)
    for e in entries:
        by_stem[e.stem.lower()].append(e)
    return _Index(entries, dict(by_stem))


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z_0-9]*)\}")


@lru_cache(maxsize=512)
def _compile(pattern: str, anchored: bool) -> re.Pattern:
    if not anchored and pattern not in ("", ".*"):
        pattern = rf"(?:.*/)?(?:{pattern})"
    elif pattern == "":
        pattern = ".*"
    return re.compile(pattern, re.IGNORECASE)


def _dir_regex(spec: DatasetSpec, pattern: str, split_regex: str | None, groups: Mapping[str, str]) -> re.Pattern:
    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key == "split":
            return f"(?:{split_regex})" if split_regex is not None else ".*"
        if key not in groups:
            raise KeyError(f"{spec.name}: directory pattern {pattern!r} uses unknown group {{{key}}}")
        return re.escape(groups[key])

    return _compile(_PLACEHOLDER.sub(fill, pattern), spec.anchored)


def _fill_name(spec: DatasetSpec, template: str, groups: Mapping[str, str]) -> str:
    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key not in groups:
            raise KeyError(f"{spec.name}: name template {template!r} uses unknown group {{{key}}}")
        return groups[key]

    return _PLACEHOLDER.sub(fill, template)


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.lower().split("/"), b.lower().split("/")):
        if x != y:
            break
        n += 1
    return n


def _find(spec, index, files: Files, split_regex, groups, image: _Entry) -> str | None:
    """Path of the file ``files`` describes for ``image``; ``None`` if absent; error if ambiguous."""
    name = _fill_name(spec, files.name, groups)
    regex = _dir_regex(spec, files.dirs, split_regex, groups)
    found = [e for e in index.by_stem.get(name.lower(), ()) if regex.fullmatch(e.reldir)]
    if len(found) > 1:  # several copies: prefer the one closest to the image
        best = max(_common_prefix_len(e.reldir, image.reldir) for e in found)
        found = [e for e in found if _common_prefix_len(e.reldir, image.reldir) == best]
    if len(found) > 1:
        raise DataError(
            f"{spec.name}: several files could pair with {image.path}: " + ", ".join(e.path for e in found),
            image.path,
        )
    return found[0].path if found else None


def _expected(spec: DatasetSpec, files: Files, groups, split_regex) -> str:
    dirs = files.dirs.replace("{split}", split_regex or "*")
    return f"{_fill_name(spec, files.name, groups)}.* in a folder matching {dirs!r}"


#: How many unusable samples one layout error lists before it says "and N more".
MAX_LISTED_PROBLEMS = 20


class _Problems:
    """Collects unusable samples found while pairing files: with ``skip_bad`` each is skipped with a warning and
    counted; otherwise all of them are gathered and :meth:`check` raises one :class:`DatasetLayoutError` that names
    every one (the first :data:`MAX_LISTED_PROBLEMS`, then how many more)."""

    def __init__(self, name: str, skip_bad: bool):
        self.name, self.skip_bad, self.skipped = name, skip_bad, []
        self.pending: list[tuple[str, DataError]] = []

    def __call__(self, sample_id: str, error: DataError):
        if not self.skip_bad:
            self.pending.append((sample_id, error))
            return
        self.skipped.append((sample_id, str(error)))
        warnings.warn(f"{self.name}: skipping {sample_id}: {error}", SkippedFileWarning, stacklevel=3)

    def check(self, root: Path, title: str, split: str | None) -> None:
        if not self.pending:
            return
        prefix = f"{root}{os.sep}"
        listed = [str(error).replace(prefix, "") for _, error in self.pending[:MAX_LISTED_PROBLEMS]]
        more = len(self.pending) - len(listed)
        where = f" (split {split!r})" if split not in (None, "all") else ""
        error = DatasetLayoutError(
            f"{root}: {len(self.pending)} {title} image(s){where} cannot be used (paths relative to the root): "
            + "; ".join(listed)
            + (f"; and {more} more" if more else "")
            + ". Restore the files, or leave these images out with skip_bad",
            root,
        )
        error.problems = [(sample_id, str(err)) for sample_id, err in self.pending]
        raise error


def _plan(
    spec: DatasetSpec, root: Path, problems: _Problems, wanted: str | None = None
) -> dict[str | None, list[_Sample]]:
    """Pair every image with its files. Only images of split ``wanted`` (``None``/``"all"``: every split) are paired
    and checked, so a missing file of another split does not stop this one; the split names found are keys of the
    result either way (empty lists for the splits not wanted)."""
    index = _index(root)
    split_dirs: Mapping[str | None, str | None] = spec.splits or {None: None}
    found: list[tuple[str | None, str | None, _Entry, dict[str, str]]] = []
    for split, split_regex in split_dirs.items():
        dir_re = _dir_regex(spec, spec.images.dirs, split_regex, {})
        name_re = re.compile(spec.images.name, re.IGNORECASE)
        for entry in index.entries:
            dm = dir_re.fullmatch(entry.reldir)
            if not dm:
                continue
            nm = name_re.fullmatch(entry.stem)
            if not nm:
                continue
            groups = {k: v or "" for k, v in {**dm.groupdict(), **nm.groupdict()}.items()}
            groups["stem"] = entry.stem
            found.append((split, split_regex, entry, groups))

    if not found:
        raise DatasetLayoutError(
            f"{root} does not look like {spec.title}: no images found. Expected the official layout, e.g. "
            f"{spec.layout or spec.images.dirs}",
            root,
        )
    every = wanted in (None, "all")

    samples: dict[str | None, list[_Sample]] = defaultdict(list)
    stems: dict[str, set] = defaultdict(set)  # over every split found, so ids do not depend on the split asked for
    seen: dict[tuple[str | None, str], str] = {}
    for split, split_regex, entry, groups in found:
        if spec.id_splits:
            num = int(groups.get("num") or -1)
            split = next((s for s, (lo, hi) in spec.id_splits.items() if lo <= num <= hi), None)
            if split is None:
                if every:  # outside every official split: an image of no split asked for otherwise
                    problems(
                        entry.stem,
                        DataError(
                            f"{entry.path}: subject id {num} is outside {spec.title}'s "
                            f"official split ranges {dict(spec.id_splits)}",
                            entry.path,
                        ),
                    )
                continue
        stems[entry.stem.lower()].add(split)
        samples.setdefault(split, [])
        if not every and split != wanted:
            continue
        key = (split, entry.stem.lower())
        if key in seen:
            raise DataError(f"{spec.name}: duplicate image {entry.stem!r}: {seen[key]} and {entry.path}", entry.path)
        seen[key] = entry.path
        try:
            lacking = []
            masks = []
            for mask in spec.masks:
                path = _find(spec, index, mask.files, split_regex, groups, entry)
                if path is None and not mask.optional:
                    lacking.append(f"missing mask (expected {_expected(spec, mask.files, groups, split_regex)})")
                masks.append((mask, path))
            extras = {
                col: (m, _find(spec, index, m.files, split_regex, groups, entry)) for col, m in spec.extras.items()
            }
            fov = None
            if spec.fov is not None:
                fov = _find(spec, index, spec.fov, split_regex, groups, entry)
                if fov is None:
                    lacking.append(f"missing FOV mask (expected {_expected(spec, spec.fov, groups, split_regex)})")
            if lacking:
                raise DataError(f"{entry.path}: " + ", ".join(lacking), entry.path)
            if spec.require_any_mask and all(p is None for _, p in [*masks, *extras.values()]):
                raise DataError(f"{entry.path}: no ground-truth file found for this image", entry.path)
        except DataError as exc:
            problems(entry.stem, exc)
            continue
        meta = {}
        for column, (group, mapping) in spec.metadata.items():
            value = groups.get(group, "")
            meta[column] = str(mapping.get(value.lower(), value)) if mapping else value
        meta.update(spec.constants)
        samples[split].append(_Sample(entry.stem, split, entry.path, masks, fov, extras, meta))
    problems.check(root, spec.title, wanted)

    # ids are the image stems, qualified by split only when stems repeat across splits
    if any(len(v) > 1 for v in stems.values()):
        for split, items in samples.items():
            for s in items:
                s.id = f"{split}_{s.id}"
    return {k: sorted(v, key=lambda s: _natural_key(s.id)) for k, v in samples.items()}


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------------
# Generation: decode, validate, map labels, one sample at a time
# --------------------------------------------------------------------------------------------------


def _check_size(path: str, img, size, image_path: str):
    if img.size != size:
        raise DataError(
            f"{path}: size {img.size[0]}x{img.size[1]} does not match image {image_path} ({size[0]}x{size[1]})", path
        )


def _mask_classes(mask: Mask, path: str, size, image_path: str, settings) -> np.ndarray:
    img = open_image(path, settings["max_pixels"])
    _check_size(path, img, size, image_path)
    return mask_to_classes(img, path, class_id=mask.class_id, values=mask.values, threshold=settings["mask_threshold"])


def _row(sample: _Sample, settings) -> dict:
    img = open_image(sample.image, settings["max_pixels"])
    size = img.size
    as_is, storable = to_storable(img, sample.image)
    image = {"path": sample.image, "bytes": None} if as_is else {"path": None, "bytes": encode_png(storable)}

    label = np.zeros((size[1], size[0]), dtype=np.uint8)
    for mask, path in sample.masks:
        if path is not None:
            classes = _mask_classes(mask, path, size, sample.image, settings)
            label = np.where(label == 0, classes, label)  # earlier masks win on overlaps
    top = int(label.max()) if label.size else 0
    if top >= settings["num_labels"]:
        raise DataError(
            f"{sample.image}: label value {top} has no name (num_labels={settings['num_labels']})", sample.image
        )

    if sample.fov is not None:
        fov_img = open_image(sample.fov, settings["max_pixels"])
        _check_size(sample.fov, fov_img, size, sample.image)
        fov = {"path": None, "bytes": encode_png(binary_mask(fov_img, sample.fov).astype(np.uint8) * 255)}
    elif settings["derive_fov"]:
        fov = {"path": None, "bytes": encode_png(derive_fov(storable).astype(np.uint8) * 255)}
    else:
        fov = None

    row = {"image": image, "label": {"path": None, "bytes": encode_png(label)}, "fov": fov, "id": sample.id}
    for column, (mask, path) in sample.extras.items():
        row[column] = (
            None if path is None
            else {"path": None, "bytes": encode_png(_mask_classes(mask, path, size, sample.image, settings))}
        )  # fmt: skip
    row.update(sample.meta)
    return row


def _generate(samples, settings, report):
    report["ran"] = True
    for sample in samples:
        try:
            row = _row(sample, settings)
        except DataError as exc:
            if not settings["skip_bad"]:
                raise
            report["skipped"].append([sample.id, str(exc)])
            warnings.warn(f"{settings['name']}: skipping {sample.id}: {exc}", SkippedFileWarning, stacklevel=2)
            continue
        yield row


def _features(spec: DatasetSpec, id2label):
    from datasets import Features, Image, Value

    cols = {"image": Image(), "label": label_feature(id2label), "fov": Image(), "id": Value("string")}
    cols.update({c: Image() for c in spec.extras})
    cols.update({c: Value("string") for c in (*spec.metadata, *spec.constants)})
    return Features(cols)


def _fingerprint(spec: DatasetSpec, samples: list[_Sample], settings, split) -> str:
    h = hashlib.sha256()
    stable = {k: v for k, v in settings.items() if k not in ("cache_dir",)}
    h.update(json.dumps([_FORMAT_VERSION, repr(spec), stable, str(split)], sort_keys=True, default=str).encode())
    for s in samples:
        paths = [s.image, s.fov, *(p for _, p in s.masks), *(p for _, p in s.extras.values())]
        for p in paths:
            if p is None:
                h.update(b"-")
                continue
            st = os.stat(p)
            h.update(f"{s.id}|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"losam-{spec.name}-{h.hexdigest()[:32]}"


def _build(spec: DatasetSpec, samples: list[_Sample], split, settings, id2label, provenance, problems):
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    if not samples:
        raise DatasetLayoutError(f"{spec.title}: no usable samples for split {split!r}")
    report: dict[str, Any] = {"ran": False, "skipped": []}
    kwargs = {}
    if settings.get("cache_dir"):
        kwargs["cache_dir"] = str(settings["cache_dir"])
    features = _features(spec, id2label)
    try:
        ds = Dataset.from_generator(
            _generate,
            features=features,
            gen_kwargs={"samples": tuple(samples), "settings": settings, "report": report},
            fingerprint=_fingerprint(spec, samples, settings, split),
            writer_batch_size=32,
            **kwargs,
        )
    except ValueError as exc:
        if isinstance(exc, DataError) or len(report["skipped"]) != len(samples):
            raise
        # skip_bad skipped every sample of this split (each with its warning): an empty split
        ds = Dataset.from_dict({c: [] for c in features}, features=features)
    except DatasetGenerationError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
    sidecar = Path(ds.cache_files[0]["filename"]).parent / "losam_skipped.json" if ds.cache_files else None
    if report["ran"]:
        if sidecar is not None:
            sidecar.write_text(json.dumps(report["skipped"]))
    elif sidecar is not None and sidecar.exists():  # cached: repeat the warnings of the first generation
        for sample_id, message in json.loads(sidecar.read_text()):
            report["skipped"].append([sample_id, message])
            warnings.warn(f"{spec.name}: skipping {sample_id}: {message}", SkippedFileWarning, stacklevel=4)
    problems.skipped.extend(tuple(x) for x in report["skipped"])
    ds.info.description = _with_description(
        ds.info, id2label={str(k): v for k, v in id2label.items()}, split=split, **provenance
    )
    ds.info.citation = spec.citation
    ds.info.homepage = spec.url
    ds.info.license = spec.license_name or spec.license
    return ds


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


_NAME_ALIASES = {
    "chasedb1": "chase_db1",
    "chasedb": "chase_db1",
    "rose_1": "rose1",
    "rose_2": "rose2",
    "octa_3m": "octa500_3m",
    "octa_6m": "octa500_6m",
    "octa3m": "octa500_3m",
    "octa6m": "octa500_6m",
}


def registry_name(name: str) -> str | None:
    """The ``DATASETS`` key of ``name`` (any case, ``-`` for ``_``, aliases such as ``chasedb1``), else ``None``."""
    key = str(name).lower().replace("-", "_")
    key = _NAME_ALIASES.get(key, key)
    return key if key in DATASETS else None


def _get_spec(name: str) -> DatasetSpec:
    key = registry_name(name)
    if key is None:
        raise LoSamValueError(f"unknown dataset {name!r}; known: {sorted([*DATASETS, 'folder'])}")
    return DATASETS[key]


def _load_spec(spec: DatasetSpec, root, split, *, skip_bad: bool, engine: Mapping[str, Any], variants: Mapping):
    from datasets import DatasetDict

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such directory (the {spec.title} root)", root)
    if split is not None:
        split = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
        valid = ("all", *spec.split_names)
        if split not in valid:
            hint = "" if spec.has_splits else f" ({spec.title} has no official splits)"
            raise LoSamValueError(f"{spec.name}: unknown split {split!r}; use None or one of {list(valid)}{hint}")
    _check_label_count(spec.title, len(spec.labels))
    problems = _Problems(spec.name, skip_bad)
    plan = _plan(spec, root, problems, split)
    id2label = dict(enumerate(spec.labels))
    settings = {
        "name": spec.name,
        "skip_bad": bool(skip_bad),
        "max_pixels": int(engine.get("max_pixels") or DEFAULT_MAX_PIXELS),
        "mask_threshold": engine.get("mask_threshold"),
        "derive_fov": bool(engine.get("derive_fov", spec.derive_fov)) and spec.fov is None,
        "num_labels": len(spec.labels),
        "cache_dir": engine.get("cache_dir"),
    }
    provenance = {
        "dataset": spec.name, "title": spec.title, "modality": spec.modality, "task": spec.task,
        "options": {k: v for k, v in variants.items()}, "source": spec.url,
    }  # fmt: skip

    if spec.has_splits and split is None:
        present = [s for s in spec.split_names if plan.get(s)]
        result = DatasetDict({s: _build(spec, plan[s], s, settings, id2label, provenance, problems) for s in present})
    else:
        if split in (None, "all"):
            samples = [s for items in plan.values() for s in items]
        else:
            samples = plan.get(split, [])
            if not samples:
                raise DatasetLayoutError(
                    f"{root}: no {spec.title} images of split {split!r} found (found splits: "
                    f"{sorted(str(k) for k in plan)})",
                    root,
                )
        result = _build(spec, samples, split, settings, id2label, provenance, problems)
    if problems.skipped:
        skipped = [sample_id for sample_id, _ in problems.skipped]
        for part in result.values() if isinstance(result, DatasetDict) else [result]:
            part.info.description = _with_description(
                part.info, skipped=skipped, skipped_reasons={str(i): reason for i, reason in problems.skipped}
            )
        warnings.warn(
            f"{spec.name}: skipped {len(problems.skipped)} bad sample(s) (skip_bad=True)",
            SkippedFileWarning,
            stacklevel=3,
        )
    return result


def skipped_samples(dataset) -> list[dict[str, str]]:
    """The samples ``skip_bad`` left out while ``dataset`` was loaded: ``[{"id", "reason"}]`` (the reason names the
    file and the problem)."""
    parts = dataset.values() if hasattr(dataset, "values") and not hasattr(dataset, "features") else [dataset]
    found = []
    for part in parts:
        meta = _read_description(getattr(part, "info", None)) if getattr(part, "info", None) is not None else {}
        reasons = meta.get("skipped_reasons") or {}
        for sample_id in meta.get("skipped") or []:
            found.append({"id": str(sample_id), "reason": str(reasons.get(str(sample_id), "unusable"))})
    return found


def _known_options(spec: DatasetSpec, extra: Sequence[str] = ()) -> str:
    own = [*spec.variants, *extra]
    mine = f"{spec.title}'s own: {', '.join(sorted(own))}" if own else f"{spec.title} has none of its own"
    return f"known options: {mine}; every dataset's: {', '.join(ENGINE_OPTIONS)}"


def _engine_value(spec: DatasetSpec, key: str, value):
    """Check one engine option's value (options from the command line arrive as text or numbers)."""
    if value is None:
        return None
    if key == "derive_fov":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise LoSamValueError(f"{spec.name}: derive_fov must be true or false, got {value!r}")
        return bool(value)
    if key == "cache_dir":
        if not isinstance(value, (str, os.PathLike)):
            raise LoSamValueError(f"{spec.name}: cache_dir must be a folder path, got {value!r}")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not np.isfinite(number):
        raise LoSamValueError(f"{spec.name}: {key} must be a number, got {value!r}")
    if key == "max_pixels":
        if number < 1 or number != int(number):
            raise LoSamValueError(f"{spec.name}: max_pixels must be a positive whole number of pixels, got {value!r}")
        return int(number)
    return number  # mask_threshold: value >= threshold is foreground


def _split_options(spec: DatasetSpec, options: Mapping[str, Any], extra: Sequence[str] = ()):
    """``(engine, variants)`` of a load's ``options``; an option the dataset does not know (or an engine option with
    a value it cannot take) is an error naming the options it knows."""
    unknown = sorted(k for k in options if k not in ENGINE_OPTIONS and k not in spec.variants and k not in extra)
    if unknown:
        raise LoSamTypeError(
            f"{spec.name}: unknown option(s) {unknown}; " + _known_options(spec, extra)
        )
    engine = {k: _engine_value(spec, k, v) for k, v in options.items() if k in ENGINE_OPTIONS}
    variants = {k: v for k, v in options.items() if k in spec.variants}
    resolved = {k: variants.get(k, spec.defaults.get(k)) for k in spec.variants}
    return engine, resolved


def load(name: str, root, split: str | None = None, *, skip_bad: bool = False, **options):
    """Load a retinal dataset from its official download layout.

    Args:
        name: one of ``DATASETS`` (``fives``, ``hrf``, ``chase_db1``, ``drive``, ``stare``, ``rose1``,
            ``rose2``, ``octa500_3m``, ``octa500_6m``, ``idrid``, ``aroi``) or ``"folder"``.
        root: the folder the download unpacked to (an extra top-level folder is fine).
        split: ``None`` (a ``DatasetDict`` of the official splits, or a ``Dataset`` if there are none),
            a split name (``train``, ``test``, ``validation`` for OCTA-500) or ``"all"``.
        skip_bad: skip unusable samples with a warning each and a count at the end instead of raising.
        **options: dataset options (``subset="SVC"|"DVC"|"SVC_DVC"`` for ROSE-1;
            ``label="large_vessel"|"capillary"|"artery_vein"|"faz"`` and ``projection="FULL"|"ILM_OPL"|...``
            for OCTA-500; ``include_optic_disc=True`` for IDRiD; the ``folder`` arguments) and, for every
            dataset, ``mask_threshold`` (accept lossy binary masks: ``value >= threshold`` is foreground),
            ``derive_fov`` (bool), ``max_pixels`` (decompression-bomb limit) and ``cache_dir``.

    Raises:
        DatasetLayoutError: the root is not that dataset (or lacks the split).
        DataError: a bad file (missing mask, size mismatch, unreadable/truncated, value outside the
            label map, too many pixels), naming it, unless ``skip_bad``.
    """
    if name.lower() == "folder":
        return folder(root, split=split, skip_bad=skip_bad, **options)
    spec = _get_spec(name)
    engine, variants = _split_options(spec, options)
    return _load_spec(spec.resolve(**variants), root, split, skip_bad=skip_bad, engine=engine, variants=variants)


def _check_label_count(what: str, count: int) -> None:
    if count > MAX_STORED_LABELS:
        raise LoSamValueError(
            f"{what}: {count} classes, but label masks are stored as 8-bit PNGs of class ids 0..{MAX_STORED_LABELS - 1} "
            f"({IGNORE_INDEX} = ignore): at most {MAX_STORED_LABELS} classes"
        )


def _checked_label_map(label_map) -> dict:
    """``label_map`` of the ``folder`` loader: stored values (or ``(r, g, b)`` colours) -> class ids 0..254."""
    if not isinstance(label_map, Mapping) or not label_map:
        raise LoSamValueError(f"label_map must map stored mask values to class ids, got {label_map!r}")
    out = {}
    for key, value in label_map.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < IGNORE_INDEX:
            raise LoSamValueError(
                f"label_map: class id {value!r} (for {key!r}) is not an integer in 0..{IGNORE_INDEX - 1}; label masks "
                f"are stored as 8-bit class ids with {IGNORE_INDEX} = ignore, so at most {MAX_STORED_LABELS} classes"
            )
        out[key] = int(value)
    return out


def folder(
    root,
    split: str | None = None,
    *,
    images: str = "images",
    masks: str = "masks",
    fov: str | None = None,
    image_pattern: str = r".+",
    mask_name: str = "{stem}",
    fov_name: str = "{stem}",
    label_map: Mapping | None = None,
    label_names: Mapping | Sequence[str] | None = None,
    skip_bad: bool = False,
    **options,
):
    """Load any images/masks folder pair (the generic loader; also ``load("folder", root, ...)``).

    ``root/images`` and ``root/masks`` (names relative to ``root``, or absolute paths) hold the images and
    masks; if ``root`` instead has sub-folders that each hold them (``root/train/images``...), those are the
    splits. Pairing: a mask's stem is ``mask_name`` filled with the image's ``{stem}`` and the named groups
    of ``image_pattern`` (e.g. ``mask_name="{stem}_mask"``); any image extension, any case. Masks are binary
    (two values) unless ``label_map`` maps stored values (or ``(r, g, b)`` colours) to class ids.
    ``label_names``: list or ``{id: name}``; defaults to ``root/id2label.json`` when present (as
    ``synthetic.save_folder`` writes it), else background/foreground or ``class_<i>``.
    """
    root = Path(root).expanduser().resolve()
    parts = {"images": images, "masks": masks, "fov": fov}
    absolute = [Path(p) for p in parts.values() if p is not None and Path(p).is_absolute()]
    if absolute:
        root = Path(os.path.commonpath([root, *absolute])) if root.is_dir() else Path(os.path.commonpath(absolute))
    rel = {k: None if p is None else Path(os.path.relpath(Path(root, p).resolve(), root)).as_posix()
           for k, p in parts.items()}  # fmt: skip
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such directory", root)
    split_names: list[str] = []
    if not (root / rel["images"]).is_dir():
        split_names = sorted(c.name for c in root.iterdir() if c.is_dir() and (c / rel["images"]).is_dir())
        if not split_names:
            raise DatasetLayoutError(f"{root}: no {rel['images']!r} folder (nor split folders holding one)", root)

    def where(sub: str) -> str:
        prefix = re.escape(root.name) + ("/{split}" if split_names else "")
        return prefix if sub == "." else f"{prefix}/{re.escape(sub)}"

    names_file = root / LABELS_FILE  # written by losam_peft.data.synthetic.save_folder and by convert
    where_names = "label_names"
    if label_names is None and names_file.is_file():
        label_names, where_names = read_labels_file(names_file), str(names_file)
    if label_names is not None:
        try:
            numbered = _normalise_id2label(label_names)
        except LoSamValueError as exc:
            raise LoSamValueError(f"{where_names}: {exc}") from None
        if list(numbered) != list(range(len(numbered))):
            raise LoSamValueError(f"{where_names}: class ids must be 0..{len(numbered) - 1}, got {list(numbered)}")
        _check_label_count(f"{where_names} ({root})", len(numbered))
        if label_map is None and len(numbered) > 2:  # multi-class masks hold the class ids themselves
            label_map = {k: k for k in numbered}
    if label_map is not None:
        label_map = _checked_label_map(label_map)
    if label_names is not None:
        names = tuple(numbered.values())
    elif label_map is None:
        names = ("background", "foreground")
    else:
        top = max(int(v) for v in label_map.values())
        names = ("background", *(f"class_{i}" for i in range(1, top + 1)))
    if label_map is not None and max(label_map.values()) >= len(names):
        raise LoSamValueError(
            f"label_map maps to class {max(label_map.values())}, but only {len(names)} classes are named ({names})"
        )
    spec = DatasetSpec(
        name="folder",
        title=f"folder {root.name}",
        modality="unknown",
        task="segmentation",
        labels=names,
        images=Files(where(rel["images"]), image_pattern),
        masks=(Mask(Files(where(rel["masks"]), mask_name), values=None if label_map is None else dict(label_map)),),
        fov=None if fov is None else Files(where(rel["fov"]), fov_name),
        splits={s: re.escape(s) for s in split_names},
        anchored=True,
        description=f"Images and masks read from {root}.",
        layout=f"{rel['images']}/<name>.png and {rel['masks']}/{mask_name}.png",
    )
    engine, _ = _split_options(spec, options, FOLDER_OPTIONS)
    variants = {"images": rel["images"], "masks": rel["masks"], "fov": rel["fov"], "mask_name": mask_name}
    return _load_spec(spec, root, split, skip_bad=skip_bad, engine=engine, variants=variants)


def load_group(group: str | DatasetGroup, roots: Mapping[str, Any], *, skip_bad: bool = False, **options):
    """Load a zero-shot group: ``{"train": Dataset, "test": {name: Dataset}}``.

    ``roots`` maps each member's dataset name to its root; ``options`` are passed to every ``load``.
    """
    group = DATASET_GROUPS[group] if isinstance(group, str) else group
    missing = [m.name for m in group.members if m.name not in roots]
    if missing:
        raise LoSamValueError(f"{group.name}: no root given for {missing}")

    def one(member):
        return load(member.name, roots[member.name], member.split, skip_bad=skip_bad, **{**options, **member.options})

    return {"train": one(group.train), "test": {m.name: one(m) for m in group.test}}


def seeded_order(ids, seed: int, salt: str = "") -> list[int]:
    """Positions of ``ids`` in a deterministic order that depends only on ``seed`` (and ``salt``) and each id:
    ranked by ``sha256(f"{seed}:{salt}{id}")``, independent of file order, platform and library versions."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{int(seed)}:{salt}{ids[i]}".encode()).hexdigest())


def select_shots(dataset, k: int, seed: int = 0):
    """Draw ``k`` training images deterministically: returns ``(subset, ids)``.

    The draw depends only on ``seed`` and the samples' ``id`` values (not on file order, platform or
    library versions): samples are ranked by ``sha256(f"{seed}:{id}")``, so a larger ``k`` with the same
    seed extends a smaller one. Record ``ids`` with the run's outputs.
    """
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        raise LoSamTypeError(f"select_shots needs one split, got a DatasetDict with {list(dataset)}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise LoSamValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    ids = [str(i) for i in dataset["id"]]
    if k > len(ids):
        raise LoSamValueError(f"cannot draw {k} shots from {len(ids)} samples")
    if len(set(ids)) != len(ids):
        raise LoSamValueError("sample ids are not unique")
    rank = seeded_order(ids, seed)
    chosen = rank[:k]
    subset = dataset.select(chosen)
    picked = [ids[i] for i in chosen]
    subset.info.description = _with_description(subset.info, shots={"k": k, "seed": int(seed), "ids": picked})
    return subset, picked


# --------------------------------------------------------------------------------------------------
# Conversion: save_to_disk / parquet, dataset card, Hub
# --------------------------------------------------------------------------------------------------


def _splits_of(ds) -> dict[str, Any]:
    from datasets import DatasetDict

    if isinstance(ds, DatasetDict):
        return dict(ds)
    split = _read_description(ds.info).get("split")
    return {split if split not in (None, "all") else "train": ds}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def dataset_card(dataset, spec: DatasetSpec | str | None = None, *, parquet_layout: bool = False):
    """A ``huggingface_hub.DatasetCard`` stating the source, licence and citation of the original dataset."""
    from huggingface_hub import DatasetCard, DatasetCardData

    splits = _splits_of(dataset)
    first = next(iter(splits.values()))
    meta = _read_description(first.info)
    if isinstance(spec, str):
        spec = DATASETS.get(spec)
    if spec is None and meta.get("dataset") in DATASETS:
        spec = DATASETS[meta["dataset"]]
    id2label = label_info(first)
    n = sum(len(d) for d in splits.values())
    title = spec.title if spec else meta.get("title", "Retinal segmentation dataset")
    url = spec.url if spec else ""
    license_id = spec.license if spec else "other"
    extra: dict[str, Any] = {}
    if license_id == "other":
        extra["license_name"] = f"{spec.name.replace('_', '-')}-terms-of-use" if spec else "original-terms"
        if url:
            extra["license_link"] = url
    if parquet_layout:
        extra["configs"] = [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}
        ]
    extra[CARD_LABELS_KEY] = labels_payload(id2label)  # the labels, where the Hub keeps them (read by load_saved)
    data = DatasetCardData(
        license=license_id,
        pretty_name=title,
        task_categories=["image-segmentation"],
        size_categories=_size_category(n),
        source_datasets=[url] if url else None,
        tags=["medical", "ophthalmology", "retina", *([spec.modality.replace(" ", "-")] if spec else []), "losam-peft"],
        **extra,
    )
    columns = [c for c in first.column_names]
    label_table = "\n".join(f"| {i} | {name} |" for i, name in id2label.items())
    licence_text = (spec.license_name or spec.license) if spec else "the terms of the original data"
    split_lines = "\n".join(f"- `{s}`: {len(d)} samples" for s, d in splits.items())
    skipped = meta.get("skipped") or []
    skipped_line = f"Skipped (unusable) samples: {len(skipped)}: {', '.join(skipped)}" if skipped else ""
    text = f"""
# {title}

{spec.description if spec else meta.get('description', '')}

This is a format conversion (images, class-id label masks, field-of-view masks) of the original dataset,
made with losam-peft for one-shot retinal segmentation. The original dataset's terms govern its use and
redistribution: check them before publishing this conversion.

## Source

- Original dataset: {url or 'user-provided folder'}
- Conversion options: `{json.dumps(meta.get('options', {}), default=str)}`

## Licence

{licence_text}{f' — see {url}' if url else ''}. The licence of this conversion is that of the original dataset.

## Citation

If you use this data, cite the original dataset:

```bibtex
{spec.citation if spec and spec.citation else '(see the original dataset)'}
```

## Labels

| id | name |
|---|---|
{label_table}

## Structure

Columns: {', '.join(f'`{c}`' for c in columns)}. `label` is a one-channel image of class ids; `fov` is 255 inside
the field of view, 0 outside (empty where the dataset has none).

{split_lines}
{skipped_line}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{text}")


def _write_parquet(ds, out: Path):
    from datasets.table import embed_table_storage

    for split, d in _splits_of(ds).items():
        target = out / "data" / f"{split}-00000-of-00001.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        embedded = d.with_format("arrow").map(embed_table_storage, batched=True, batch_size=32, keep_in_memory=True)
        embedded.with_format(None).to_parquet(str(target))


def _push(out: Path, fmt: str, repo_id: str, card, *, private: bool, token):
    from datasets import Dataset, DatasetDict, load_from_disk
    from huggingface_hub import DatasetCard

    if fmt == "arrow":
        ds = load_from_disk(str(out))
    else:
        ds = DatasetDict(
            {p.name.split("-")[0]: Dataset.from_parquet(str(p)) for p in sorted((out / "data").glob("*.parquet"))}
        )
    push_kwargs = {"private": private, "token": token, "commit_message": "Upload dataset (losam-peft convert)"}
    if isinstance(ds, Dataset):
        push_kwargs["split"] = next(iter(_splits_of(ds)))
    ds.push_to_hub(repo_id, **push_kwargs)
    # keep the dataset_info/configs that push_to_hub wrote, add ours (licence, source, citation)
    try:
        existing = DatasetCard.load(repo_id, repo_type="dataset", token=token).data.to_dict()
    except Exception:  # noqa: BLE001 - no card yet, or offline mocks
        existing = {}
    ours = card.data.to_dict()
    ours.pop("configs", None)
    merged = {**existing, **ours}
    from huggingface_hub import DatasetCardData

    final = DatasetCard(f"---\n{DatasetCardData(**merged).to_yaml()}\n---\n{card.text}")
    final.push_to_hub(repo_id, repo_type="dataset", token=token, commit_message="Add dataset card (losam-peft)")
    return final


def convert(
    name: str,
    root,
    out_dir,
    split: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    skip_bad: bool = False,
    *,
    format: str = "arrow",
    overwrite: bool = False,
    token: str | None = None,
    labels: Mapping | Sequence[str] | None = None,
    **options,
) -> Path:
    """Load ``name`` from ``root`` and write it to ``out_dir`` with a dataset card (``README.md``).

    ``format="arrow"`` writes ``save_to_disk`` output (``datasets.load_from_disk(out_dir)``);
    ``format="parquet"`` writes ``data/<split>-00000-of-00001.parquet`` (``datasets.load_dataset(out_dir)``).
    Image bytes are embedded, so the output does not depend on ``root``. The write is atomic: a temporary
    sibling folder renamed into place (an existing ``out_dir`` needs ``overwrite=True``).
    ``push_to_hub="user/name"`` then uploads it (``private``, ``token``) and its card.

    The label names go with the data three ways, so that ``losam train/evaluate --dataset OUT_DIR`` (or the Hub id)
    reads them back: in the ``label`` feature and ``info.description`` (see :func:`attach_label_names`), in
    ``OUT_DIR/id2label.json`` (``{"0": "background", "1": "vessel"}``) and in the card's ``id2label`` entry.
    ``labels``: class names (list or ``{id: name}``); for ``folder`` they name its class ids (its ``label_names``),
    for a named dataset they must agree with the dataset's own (else :class:`LabelMismatchError`).
    """
    if format not in ("arrow", "parquet"):
        raise LoSamValueError(f"format must be 'arrow' or 'parquet', not {format!r}")
    out = check_replaceable(out_dir, [root], overwrite=overwrite, what="converted dataset")
    wanted = _normalise_id2label(labels) if labels is not None else None
    if wanted is not None and name.lower() == "folder":
        if options.get("label_names") is not None and _normalise_id2label(options["label_names"]) != wanted:
            raise LoSamValueError("give the folder's class names once: labels or label_names, not both")
        options = {**options, "label_names": wanted}
    ds = load(name, root, split, skip_bad=skip_bad, **options)
    if wanted is not None and label_info(ds) != wanted:
        raise LabelMismatchError(
            f"{name}: the labels given ({', '.join(wanted.values())}) disagree with the dataset's own "
            f"({', '.join(label_info(ds).values())})"
        )
    spec = None if name.lower() == "folder" else _get_spec(name)
    card = dataset_card(ds, spec, parquet_layout=format == "parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        if format == "arrow":
            ds.save_to_disk(str(tmp))
        else:
            tmp.mkdir()
            _write_parquet(ds, tmp)
        card.save(tmp / CARD_NAME)
        labels = json.dumps(labels_payload(label_info(ds)), ensure_ascii=False, indent=1) + "\n"
        (tmp / LABELS_FILE).write_text(labels, encoding="utf-8")
        mark_output(tmp, "dataset")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        _push(out, format, push_to_hub, card, private=private, token=token)
    return out
