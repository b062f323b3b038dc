"""Batch prediction over files, folders, globs and datasets: masks, overlays, probabilities and a summary CSV.

``losam predict`` is a thin wrapper over :func:`predict_paths` (files) and :func:`predict_dataset` (a saved or Hub
dataset)::

    losam predict --adapter ADAPTER --input images/ --output-dir predictions/
    losam predict --adapter ADAPTER --input-dataset my_saved_dataset --output-dir predictions/ --output-format dataset
    losam predict --adapter ADAPTER --input images/ --output-dir predictions/ --num-processes 4
    accelerate launch -m losam_peft.cli predict --adapter ADAPTER --input images/ --output-dir predictions/

Outputs (every file written atomically: a temporary file in the same folder, then ``os.replace``):

* ``masks/NAME.png``: one palette PNG per image whose pixel values are the class ids (0 = background),
* ``overlays/NAME.png`` (``overlay=True``): the image with the predicted classes drawn over it,
* ``probabilities/NAME.npz`` (``probabilities=True``): ``probabilities`` (num_labels, H, W) float16 and ``labels``,
* with ``output_format="dataset"`` instead of those files: ``data/part-*.parquet`` shards of a datasets-loadable
  dataset (columns ``id``, ``mask`` (Image), ``width``, ``height``, optional ``overlay`` (Image) and
  ``probabilities`` (num_labels × H × W float16 lists)); ``datasets.load_dataset(OUTPUT_DIR, split="train")`` or
  ``load_dataset("parquet", data_files="OUTPUT_DIR/data/*.parquet", split="train")`` reads it,
* ``summary.csv``: per image the size, the fraction of pixels of each foreground class, the seconds it took, the
  number of tiles, the process that made it, a note on conversions (CMYK, 16-bit, FOV) and, for skipped files, the
  reason. Rows are appended (and flushed) as images finish, so a killed run leaves a summary of what is done; the
  final summary is rewritten atomically in input order,
* ``predict_settings.json``: the adapter's fingerprint (sha256 of its files) and every setting that changes pixels
  (tile, overlap, image size, normalisation, dtype, FOV, labels, alpha). ``resume=True`` refuses a folder whose
  settings differ, saying what differs, so masks of another adapter are never counted as done.

Files that cannot be read (non-images, truncated files, missing FOV masks) are skipped, reported in the summary and
counted; they never abort the run (nor a DataLoader worker). ``resume=True`` skips images whose outputs already
exist. An output folder is only written when it is new or empty, or was written by ``losam predict`` (its
``.losam-output`` marker): with ``resume`` it is continued, with ``overwrite`` its own old outputs are removed first,
otherwise it is refused. While a run writes a folder it holds the folder's lock (``.losam-lock``); a second run into
the same folder is refused with the owner's pid.

Scale
-----
Decoding and preprocessing run in a ``torch.utils.data.DataLoader`` (``num_workers``; default
:func:`default_num_workers`; pinned memory when the model is on CUDA); the forward pass runs batched
(``batch_size`` images, or windows in tiled mode) on the main thread; post-processing (resize back, softmax, FOV)
and writing run in a background thread. Under ``accelerate launch`` (or ``--num-processes``) the inputs are sharded
with Accelerate's ``PartialState.split_between_processes``: every output is written by exactly one process, each
process appends to its own summary part, and the main process merges them into one ``summary.csv`` after a
barrier. Streaming datasets are dealt round-robin (example ``k`` to process ``k mod N``).

Whole image or tiles
--------------------
By default each image is resized as a whole to the model's input (``image_size``, 1024 for SAM), as the paper's
recipe does when it trains on one image resized to 1024×1024. ``tile=T`` switches to sliding-window inference: the
image is cut into overlapping T×T windows (``overlap`` is the fraction shared by neighbours), each window is resized
to the model's input, and the class probabilities of overlapping windows are blended with linear-ramp weights
(weight rising from the window's border to 1 over the overlap width), so seams disappear.

The default (whole-image resize) was chosen by measurement (``benchmarks/tiling.py``; the table is there): match
the inference geometry to the training geometry. Adapters trained the paper's way (whole images resized to
``image_size``) gained nothing consistent from tiling; adapters trained on native-resolution crops should be run
with ``tile`` = the training crop size.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import (  # noqa: F401  (atomic_write_text re-exported)
    LOCK_NAME,
    OUTPUT_MARKER,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_apart,
    mark_output,
    output_lock,
)
from .constants import __version__
from .data.io import binary_mask, split_image_name
from .errors import DataError, LoSamError, LoSamValueError, OutputExistsError, PredictionError
from .image_processing_losam import class_map, decode_array, open_image

# tiling lives in losam_peft.tiling; the old names stay importable from here
from .tiling import _check_tile, blend_weights, count_tiles, tile_starts, tiled_probabilities  # noqa: F401
from .visualization import label_map_to_pil

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PROBABILITIES_DIR = "probabilities"
DATASET_DIR = "data"
DATASET_SPLIT = "train"
SETTINGS_NAME = "predict_settings.json"
OUTPUT_FORMATS = ("files", "dataset")
#: the ``what`` of the output marker that predict writes
OUTPUT_WHAT = "predictions"
_PART_PREFIX = ".summary-part-"
_GLOB_CHARS = re.compile(r"[*?\[]")
#: FOV mask file stems tried for an image stem S, in order (DRIVE: 21_training_mask.gif; HRF: 01_dr_mask.tif)
FOV_SUFFIXES = ("", "_mask", "_fov", "-mask", "-fov", "_FOV")
_SHARD_BYTES = 256 << 20


# -- inputs ------------------------------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:

    return split_image_name(name) is not None


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in ("thumbs.db", "desktop.ini")


def scan_inputs(inputs: str | os.PathLike | Iterable, recursive: bool = False):
    """Expand files, folders and globs: ``(image_files, ignored, missing)``.

    ``image_files``: ``(path, name)`` pairs in a stable order, ``name`` the output name (relative to its folder,
    without extension). ``ignored``: ``(path, reason)`` for files in folders/globs that are not images by their
    extension (hidden files are left out silently). ``missing``: ``(input, reason)`` for inputs that match nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[tuple[Path, str]] = []
    ignored: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    for entry in inputs:
        text = os.path.expanduser(str(entry))
        path = Path(text)
        if path.is_file():
            found.append((path, _stem(path)))
        elif path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            for item in sorted(walker):
                if not item.is_file() or any(_is_hidden(Path(p)) for p in item.relative_to(path).parts):
                    continue
                if _is_image_name(item.name):
                    rel = item.relative_to(path)
                    found.append((item, str(rel.parent / _stem(item)) if rel.parent != Path(".") else _stem(item)))
                else:
                    ignored.append((str(item), f"not an image file (extension {item.suffix or 'none'!r}); skipped"))
        elif _GLOB_CHARS.search(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file() and not _is_hidden(m)]
            if not files:
                missing.append((text, "the pattern matches no file"))
            for item in files:
                if _is_image_name(item.name):
                    found.append((item, _stem(item)))
                else:
                    ignored.append((str(item), f"not an image file (extension {item.suffix or 'none'!r}); skipped"))
        elif path.exists():
            missing.append((text, "not a regular file or folder"))
        else:
            missing.append((text, "no such file or folder"))
    return _dedupe(found), ignored, missing


def iter_input_files(source: str | os.PathLike, recursive: bool = False) -> Iterator[Path]:
    """The image files named by a path, a folder (its image files) or a glob (``"data/**/*.png"``), sorted.

    Raises ``FileNotFoundError`` when the path does not exist or the pattern matches nothing.
    """
    files, _, missing = scan_inputs([source], recursive=recursive)
    if missing:
        raise FileNotFoundError(f"{missing[0][0]}: {missing[0][1]}")
    for path, _ in files:
        yield path


def _stem(path: Path) -> str:
    """Output name of an image: its stem, or ``stem_ext`` when a sibling image shares the stem (a.png, a.jpg).

    Depends only on the file and its folder, not on which inputs a run was given, so ``resume`` finds the same
    names whatever subset of a folder an earlier run covered.
    """

    split = split_image_name(path.name)
    if not split:
        return path.stem
    stem, ext = split
    try:
        siblings = [
            other
            for other in path.parent.iterdir()
            if other.name != path.name and (s := split_image_name(other.name)) and s[0].lower() == stem.lower()
        ]
    except OSError:
        siblings = []
    if siblings:
        return f"{stem}_{ext.lstrip('.').replace('.', '_').lower()}"
    return stem


def _dedupe(found: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Drop repeated files; give same-named files from different folders numbered names (``name_2``)."""
    seen_paths: set[Path] = set()
    used: set[str] = set()
    out = []
    for path, name in found:
        key = path.resolve()
        if key in seen_paths:
            continue
        seen_paths.add(key)
        candidate, k = name, 2
        while candidate.lower() in used:
            candidate = f"{name}_{k}"
            k += 1
        used.add(candidate.lower())
        out.append((path, candidate))
    return out


# -- outputs -----------------------------------------------------------------------------------------------------------
def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _npz_bytes(probabilities: np.ndarray, id2label: dict[int, str]) -> bytes:
    buffer = io.BytesIO()
    labels = np.array([id2label.get(i, str(i)) for i in range(probabilities.shape[0])])
    np.savez_compressed(buffer, probabilities=probabilities.astype(np.float16), labels=labels)
    return buffer.getvalue()


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` and make sure files can be written there; a clear :class:`PredictionError` if not."""
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise PredictionError(f"cannot write predictions to {output_dir}: it is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise PredictionError(
            f"cannot write predictions to {output_dir}: {reason}. Choose another output folder (--output) or fix "
            "its permissions"
        ) from None
    return output_dir


def _column(name: str) -> str:
    return "fraction_" + re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower()


def default_num_workers(num_processes: int = 1) -> int:
    """DataLoader workers per process: ``min(4, cpus per process - 1)``, 0 (decode on the main thread) on one core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus // max(1, int(num_processes)) - 1))


@dataclass
class PredictionSummary:
    """What :func:`predict_paths` did. ``describe()`` gives a few lines to print.

    On the main process the counts are those of the whole run (all processes); elsewhere (``is_main`` false) they
    are the process's own share."""

    output_dir: Path
    csv_path: Path
    mode: str
    processed: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)
    num_processes: int = 1
    is_main: bool = True
    output_format: str = "files"

    @property
    def total(self) -> int:
        return self.processed + self.resumed + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        where = "" if self.num_processes == 1 else f" by {self.num_processes} processes"
        outputs = (
            f"masks in {self.output_dir / MASKS_DIR}"
            if self.output_format == "files"
            else f"dataset in {self.output_dir} (split {DATASET_SPLIT!r}, shards in {self.output_dir / DATASET_DIR})"
        )
        lines = [
            f"{self.processed} image(s) segmented ({self.mode}){where} in {self.seconds:.1f} s"
            + (f", {self.resumed} already done (resume)" if self.resumed else ""),
            f"{outputs}, summary in {self.csv_path}",
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} file(s) could not be segmented:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        if self.ignored:
            lines.append(f"{len(self.ignored)} non-image file(s) ignored:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.ignored)
        return "\n".join(lines)


# -- the summary: journals appended as images finish, merged at the end --------------------------------------------------
def _summary_columns(fraction_columns: list[str]) -> list[str]:
    return ["file", "name", "status", "width", "height", *fraction_columns, "seconds", "tiles", "process", "note",
            "error"]  # fmt: skip


def _part_path(output_dir: Path, rank: int) -> Path:
    return output_dir / f"{_PART_PREFIX}{rank:05d}.csv"


def _journals(output_dir: Path) -> list[Path]:
    parts = sorted(output_dir.glob(f"{_PART_PREFIX}*.csv"))
    return [output_dir / SUMMARY_NAME, *parts]


class _Journal:
    """A summary CSV appended one flushed row at a time (rank 0 appends to ``summary.csv``, others to a part)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        fresh = not path.is_file() or path.stat().st_size == 0
        self.handle = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        if fresh:
            self.writer.writeheader()
            self.handle.flush()

    def append(self, row: dict) -> None:
        self.writer.writerow({key: row.get(key, "") for key in self.columns})
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [row for row in csv.DictReader(handle) if row.get("file")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _read_previous_rows(output_dir: Path) -> dict[str, dict]:
    """Finished rows of earlier runs (summary.csv and the parts a killed run left), the latest per file."""
    previous: dict[str, dict] = {}
    for path in _journals(output_dir):
        for row in _read_rows(path):
            if row.get("status") in ("ok", "resumed"):
                previous[row["file"]] = row
    return previous


def _write_csv(csv_path: Path, rows: list[dict], fraction_columns: list[str]) -> None:
    columns = _summary_columns(fraction_columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    atomic_write_bytes(csv_path, buffer.getvalue().encode("utf-8"))


# -- settings and the adapter's fingerprint ----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_digest(model) -> str:
    """sha256 over an in-memory model's tensors (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def prediction_settings(pipeline, *, tile=None, overlap=0.25, fov=None, alpha=0.5) -> dict:
    """What decides the pixels of a prediction: the adapter's fingerprint and the settings (``predict_settings.json``).

    The fingerprint is the sha256 of the adapter's ``adapter_model.safetensors``, ``adapter_config.json`` and
    ``preprocessor_config.json`` when the pipeline was loaded from a folder, else of the in-memory model's tensors.
    """
    adapter: dict[str, Any] = {}
    folder = None
    if pipeline.adapter is not None:
        with contextlib.suppress(Exception):
            from .pipeline import resolve_adapter_folder

            folder = resolve_adapter_folder(pipeline.adapter, local_files_only=True)
    if folder is not None and (folder / "adapter_model.safetensors").is_file():
        for name in ("adapter_model.safetensors", "adapter_config.json", "preprocessor_config.json"):
            if (folder / name).is_file():
                adapter[name] = _sha256(folder / name)
    else:
        adapter["model_tensors"] = _model_digest(pipeline.model)
    processor = pipeline.image_processor
    dtype = "float32" if pipeline.dtype is None else str(pipeline.dtype).replace("torch.", "")
    return {
        "adapter": adapter,
        "base_model": None if pipeline.base_model is None else str(pipeline.base_model),
        "labels": {str(k): v for k, v in sorted(pipeline.id2label.items())},
        "image_size": pipeline.image_size,
        "processor": {
            "mode": getattr(processor, "mode", None),
            "image_mean": list(getattr(processor, "image_mean", [])),
            "image_std": list(getattr(processor, "image_std", [])),
        },  # fmt: skip
        "dtype": dtype,
        "tile": tile,
        "overlap": float(overlap) if tile else None,
        "fov": fov,
        "alpha": float(alpha),
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            if prefix == "adapter.":
                found.append(f"adapter file {key} (sha256 {str(a)[:12] if a else 'absent'} then, "
                             f"{str(b)[:12] if b else 'absent'} now)")  # fmt: skip
            else:
                found.append(f"{prefix}{key} ({json.dumps(a)} then, {json.dumps(b)} now)")
    return found


# -- the output folder -------------------------------------------------------------------------------------------------
def _own_outputs(output_dir: Path) -> list[Path]:
    names = [MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, DATASET_DIR, SUMMARY_NAME, SETTINGS_NAME]
    found = [output_dir / n for n in names if (output_dir / n).exists()]
    found += sorted(output_dir.glob(f"{_PART_PREFIX}*.csv"))
    return found


def _read_settings(output_dir: Path) -> dict | None:
    path = output_dir / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputExistsError(f"{path}: unreadable ({err}); choose a new output folder", path) from None
    return data if isinstance(data, dict) else None


def _marker_what(output_dir: Path) -> str | None:
    path = output_dir / OUTPUT_MARKER
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("what"))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _prepare_folder(output_dir: Path, settings: dict, *, resume: bool, overwrite: bool) -> None:
    """The rules for predict's output folder (run by the main process, holding the lock)."""
    junk = (LOCK_NAME, OUTPUT_MARKER, ".DS_Store", "Thumbs.db", "desktop.ini")  # not a reason to refuse a folder
    entries = [p for p in output_dir.iterdir() if p.name not in junk]
    what = _marker_what(output_dir)
    if entries and what is None:
        raise OutputExistsError(
            f"{output_dir} is not empty and was not written by losam predict (no {OUTPUT_MARKER} in it); predictions "
            "are only written into a new or empty folder or one of their own: choose another --output-dir",
            output_dir,
        )
    if what is not None and what != OUTPUT_WHAT:
        raise OutputExistsError(
            f"{output_dir} holds a losam-peft {what}, not predictions; choose another --output-dir", output_dir
        )
    own = _own_outputs(output_dir)
    if own and resume:
        old = _read_settings(output_dir)
        if old is None:
            raise OutputExistsError(
                f"{output_dir} has no {SETTINGS_NAME}, so what made its masks is unknown and they cannot be resumed; "
                "pass --overwrite to replace them or choose a new --output-dir",
                output_dir,
            )
        differences = _differences(
            {k: v for k, v in old.items() if k not in ("written_by", "version", "started")},
            {k: v for k, v in settings.items() if k not in ("written_by", "version", "started")},
        )
        if differences:
            raise OutputExistsError(
                f"{output_dir}: cannot resume, its predictions were made with other settings: "
                + "; ".join(differences)
                + ". Resume with the same adapter and settings, pass --overwrite to replace them, or choose a new "
                "--output-dir",
                output_dir,
            )
    elif own and not overwrite:
        raise OutputExistsError(
            f"{output_dir} holds the predictions of an earlier run; pass --resume to continue it or --overwrite to "
            "replace them",
            output_dir,
        )
    elif own:  # overwrite: remove this package's old outputs only (other files in the folder stay)
        for path in own:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    atomic_write_json(output_dir / SETTINGS_NAME, settings)
    mark_output(output_dir, OUTPUT_WHAT)


# -- what to read ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    index: int  # position in input order
    key: str  # the summary's "file": a path, or the dataset id
    name: str  # output name
    source: Any  # a Path, or a dataset row index


class _FovFolder:
    """FOV masks in a folder, matched to images by stem (``S`` or ``S_mask``, ``S_fov``…; see FOV_SUFFIXES)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise LoSamValueError(f"fov: {self.folder} is not a folder (give the folder of the FOV masks)")
        self.by_stem: dict[str, list[Path]] = {}
        for item in sorted(self.folder.iterdir()):
            split = split_image_name(item.name)
            if item.is_file() and split and not item.name.startswith("."):
                self.by_stem.setdefault(split[0].lower(), []).append(item)

    def find(self, image: Path) -> Path:
        split = split_image_name(image.name)
        stem = (split[0] if split else image.stem).lower()
        for suffix in FOV_SUFFIXES:
            found = self.by_stem.get(stem + suffix.lower())
            if found:
                if len(found) > 1:
                    names = ", ".join(p.name for p in found)
                    raise DataError(f"more than one FOV mask for it in {self.folder} ({names})", image)
                return found[0]
        raise DataError(f"no FOV mask for it in {self.folder} (looked for {stem}{{{','.join(FOV_SUFFIXES)}}}.*)", image)

    def read(self, image: Path) -> np.ndarray:
        path = self.find(image)
        return binary_mask(open_image(path), path)


def _safe_name(text: str, index: int) -> str:
    name = re.sub(r"[^\w.\-]+", "_", str(text)).strip("._")
    return name or f"item{index:06d}"


def _decode_value(value, where: str) -> tuple[np.ndarray, str]:
    """A dataset cell (PIL image, ``{"bytes", "path"}``, array) through the package's decoder."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path:
            return decode_array(path)
        if data is None:
            raise DataError(f"{where}: the image cell is empty")
        from PIL import Image

        from .image_processing_losam import DEFAULT_MAX_PIXELS

        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > DEFAULT_MAX_PIXELS:
                raise DataError(f"{where}: {width}x{height} pixels exceeds the limit of {DEFAULT_MAX_PIXELS}")
            opened.load()
            return decode_array(opened)
    if value is None:
        raise DataError(f"{where}: the image cell is empty")
    return decode_array(value)


def _grey_fov(value, where: str) -> np.ndarray:
    array, _ = _decode_value(value, where)
    if array.ndim == 3:
        array = array.max(axis=2)
    return np.asarray(array) > 0


class _FileSource:
    def __init__(self, files, ignored, missing, fov: _FovFolder | None, inputs):
        self.items = [_Item(i, str(path), name, path) for i, (path, name) in enumerate(files)]
        self.carried = [{"file": item, "status": "failed", "error": reason} for item, reason in missing]
        self.carried += [{"file": path, "status": "ignored", "error": reason} for path, reason in ignored]
        self.failed = list(missing)
        self.ignored = list(ignored)
        self.fov = fov
        folders = [Path(os.path.expanduser(str(x))) for x in inputs]
        self.apart = [p for p in folders if p.is_dir()] + [path for path, _ in files]
        self.streaming = False

    def item_id(self, item: _Item) -> str:
        return item.name

    def read(self, item: _Item) -> tuple[np.ndarray, str, np.ndarray | None]:
        array, note = decode_array(item.source)  # the image processor's decoder: the pixels the model sees
        fov = None
        if self.fov is not None:
            fov = self.fov.read(item.source)
            note = "; ".join(x for x in (note, "outside the FOV set to 0") if x)
        return array, note, fov


class _DatasetSource:
    def __init__(self, dataset, *, where: str, image_column: str, id_column: str | None, fov_column: str | None,
                 streaming: bool, apart):  # fmt: skip
        self.where, self.image_column, self.fov_column = where, image_column, fov_column
        self.id_column, self.streaming = id_column, streaming
        self.carried, self.failed, self.ignored = [], [], []
        self.apart = apart
        self.dataset = _undecoded(dataset, [c for c in (image_column, fov_column) if c])
        if streaming:
            self.items = None
        else:
            ids = self.dataset[id_column] if id_column else list(range(len(self.dataset)))
            used: set[str] = set()
            self.items = []
            for index, raw in enumerate(ids):
                name, k = _safe_name(raw, index), 2
                candidate = name
                while candidate.lower() in used:
                    candidate, k = f"{name}_{k}", k + 1
                used.add(candidate.lower())
                self.items.append(_Item(index, str(raw), candidate, index))

    def item_id(self, item: _Item) -> str:
        return item.key

    def row_item(self, index: int, row: dict, used: set[str]) -> _Item:
        raw = row[self.id_column] if self.id_column else index
        name, k = _safe_name(raw, index), 2
        candidate = name
        while candidate.lower() in used:
            candidate, k = f"{name}_{k}", k + 1
        used.add(candidate.lower())
        return _Item(index, str(raw), candidate, row)

    def read(self, item: _Item) -> tuple[np.ndarray, str, np.ndarray | None]:
        row = self.dataset[item.source] if isinstance(item.source, int) else item.source
        where = f"{self.where} row {item.index} (id {item.key})"
        array, note = _decode_value(row[self.image_column], where)
        fov = None
        if self.fov_column:
            fov = _grey_fov(row[self.fov_column], f"{where}, column {self.fov_column}")
            note = "; ".join(x for x in (note, "outside the FOV set to 0") if x)
        return array, note, fov


def _undecoded(dataset, columns: list[str]):
    """The dataset with its Image columns left as bytes: the package's decoder reads them (in the workers)."""
    import datasets

    features = getattr(dataset, "features", None) or {}
    for column in columns:
        if isinstance(features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


# -- reading in DataLoader workers -------------------------------------------------------------------------------------
def _read_record(source, item: _Item, processor, whole: bool) -> dict:
    """Decode (and, for whole-image mode, preprocess) one input; every failure becomes the record's ``error``."""
    started = time.perf_counter()
    record: dict[str, Any] = {"item": item}
    try:
        array, note, fov = source.read(item)
        if fov is not None and fov.shape != array.shape[:2]:
            raise DataError(
                f"its FOV mask is {fov.shape[1]}x{fov.shape[0]} but the image is {array.shape[1]}x{array.shape[0]} "
                "(WxH)"
            )
        record.update(array=array, note=note, fov=fov, size=tuple(array.shape[:2]))
        if whole:
            record["pixel_values"] = processor.preprocess([array])["pixel_values"][0]
    except Exception as err:  # a bad file never kills a worker or the run
        record["error"] = _reason(err, item.key)
    record["read_seconds"] = time.perf_counter() - started
    if isinstance(item.source, dict):  # a streamed row: do not carry its bytes further
        record["item"] = _Item(item.index, item.key, item.name, None)
    return record


class _MapReader(torch.utils.data.Dataset):
    def __init__(self, source, items: list[_Item], processor, whole: bool):
        self.source, self.items, self.processor, self.whole = source, items, processor, whole

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return _read_record(self.source, self.items[index], self.processor, self.whole)


class _StreamReader(torch.utils.data.IterableDataset):
    """Example ``k`` of a streamed dataset goes to process ``k mod N`` and, within it, to worker ``(k // N) mod W``;
    examples whose id is done (``skip``) are passed over."""

    def __init__(self, source, processor, whole: bool, rank: int, world: int, skip: set[str]):
        self.source, self.processor, self.whole = source, processor, whole
        self.rank, self.world, self.skip = rank, world, skip

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        used: set[str] = set()
        for index, row in enumerate(self.source.dataset):
            item = self.source.row_item(index, row, used)  # every process names every example: names stay unique
            if index % self.world != self.rank or (index // self.world) % workers != worker:
                continue
            if self.source.item_id(item) in self.skip:
                continue
            yield _read_record(self.source, item, self.processor, self.whole)


def _collate(records: list[dict]) -> dict:
    good = [r for r in records if "error" not in r and "pixel_values" in r]
    batch: dict[str, Any] = {"records": records}
    if good:
        batch["pixel_values"] = torch.stack([r.pop("pixel_values") for r in good])
    return batch


# -- writing -----------------------------------------------------------------------------------------------------------
class _FileSink:
    """masks/, overlays/, probabilities/ files; every row is journaled as soon as its files are in place."""

    def __init__(self, output_dir: Path, journal: _Journal, overlay: bool, probabilities: bool):
        self.output_dir, self.journal = output_dir, journal
        self.overlay, self.probabilities = overlay, probabilities
        self.rows: list[dict] = []

    def targets(self, name: str) -> dict[str, Path]:
        return _targets(self.output_dir, name, self.overlay, self.probabilities)

    def add(self, row: dict, outputs: dict[str, bytes] | None) -> dict:
        if outputs:
            targets = self.targets(row["name"])
            try:
                for kind in ("probabilities", "overlay", "mask"):  # the mask last: it marks the image as done
                    if kind in outputs:
                        atomic_write_bytes(targets[kind], outputs[kind])
            except OSError as err:
                row = {"file": row["file"], "name": row["name"], "status": "failed", "process": row.get("process"),
                       "error": f"cannot write outputs: {err.strerror or err}"}  # fmt: skip
        self.journal.append(row)
        self.rows.append(row)
        return row

    def close(self) -> None:
        self.journal.close()


def _targets(output_dir: Path, name: str, overlay: bool, probabilities: bool) -> dict[str, Path]:
    out = {"mask": output_dir / MASKS_DIR / f"{name}.png"}
    if overlay:
        out["overlay"] = output_dir / OVERLAYS_DIR / f"{name}.png"
    if probabilities:
        out["probabilities"] = output_dir / PROBABILITIES_DIR / f"{name}.npz"
    return out


def _dataset_features(overlay: bool, probabilities: bool):
    import datasets

    columns = {"id": datasets.Value("string"), "mask": datasets.Image(), "width": datasets.Value("int32"),
               "height": datasets.Value("int32")}  # fmt: skip
    if overlay:
        columns["overlay"] = datasets.Image()
    if probabilities:
        columns["probabilities"] = datasets.List(datasets.List(datasets.List(datasets.Value("float16"))))
    return datasets.Features(columns)


class _DatasetSink:
    """Parquet shards of a datasets-loadable dataset; rows are journaled when the shard holding them is written."""

    def __init__(self, output_dir: Path, journal: _Journal, overlay: bool, probabilities: bool, rank: int,
                 shard_size: int):  # fmt: skip
        self.folder = output_dir / DATASET_DIR
        self.journal, self.overlay, self.probabilities = journal, overlay, probabilities
        self.rank, self.shard_size = rank, shard_size
        self.stamp = time.strftime("%Y%m%d%H%M%S") + f"{os.getpid() % 100000:05d}"
        self.count = 0
        self.buffer: list[tuple[dict, dict]] = []
        self.bytes = 0
        self.rows: list[dict] = []

    def add(self, row: dict, outputs: dict | None) -> dict:
        if outputs is None:  # a failure: nothing to store
            self.journal.append(row)
            self.rows.append(row)
            return row
        self.buffer.append((row, outputs))
        self.bytes += sum(len(v) if isinstance(v, bytes) else getattr(v, "nbytes", 0) for v in outputs.values())
        if len(self.buffer) >= self.shard_size or self.bytes >= _SHARD_BYTES:
            self.flush()
        return row

    def flush(self) -> None:
        if not self.buffer:
            return
        import datasets

        columns: dict[str, list] = {"id": [], "mask": [], "width": [], "height": []}
        if self.overlay:
            columns["overlay"] = []
        if self.probabilities:
            columns["probabilities"] = []
        for row, outputs in self.buffer:
            columns["id"].append(outputs["id"])
            columns["width"].append(int(row["width"]))
            columns["height"].append(int(row["height"]))
            columns["mask"].append({"bytes": outputs["mask"], "path": None})
            if self.overlay:
                columns["overlay"].append({"bytes": outputs["overlay"], "path": None})
            if self.probabilities:
                columns["probabilities"].append(outputs["probabilities_array"].astype(np.float16))
        table = datasets.Dataset.from_dict(columns, features=_dataset_features(self.overlay, self.probabilities))
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"part-{self.stamp}-p{self.rank:03d}-{self.count:05d}.parquet"
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        quiet = are_progress_bars_disabled()
        disable_progress_bars()  # a bar per shard is noise
        try:
            atomic_save(target, lambda temp: table.to_parquet(temp))
        finally:
            if not quiet:
                enable_progress_bars()
        self.count += 1
        for row, _ in self.buffer:
            self.journal.append(row)
            self.rows.append(row)
        self.buffer, self.bytes = [], 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.journal.close()


def _dataset_ids(output_dir: Path) -> set[str]:
    """The ids stored in the dataset shards already written (each shard is complete: it was written atomically)."""
    ids: set[str] = set()
    folder = output_dir / DATASET_DIR
    if not folder.is_dir():
        return ids
    import pyarrow.parquet as pq

    for path in sorted(folder.glob("*.parquet")):
        try:
            ids.update(str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist())
        except Exception as err:
            raise OutputExistsError(f"{path}: an unreadable dataset shard ({err}); remove it or use --overwrite",
                                    path) from None  # fmt: skip
    return ids


# -- the run -----------------------------------------------------------------------------------------------------------
def process_state(device=None):
    """Who this process is in the run: Accelerate's ``PartialState`` under ``accelerate launch``, ``torchrun`` or
    ``--num-processes`` (or when the caller's script already set it up), on machines without CUDA (or for
    ``device="cpu"``) with the gloo CPU backend; a plain single process otherwise (no Accelerate state is created,
    so a later ``Accelerator(...)`` in the same process is free to choose its own settings)."""
    from accelerate import PartialState

    if not in_distributed_launch() and not getattr(PartialState, "_shared_state", None):
        return _SingleProcess()
    cpu = not torch.cuda.is_available()
    if device is not None:
        with contextlib.suppress(RuntimeError, TypeError):
            cpu = cpu or torch.device(device).type == "cpu"
    return PartialState(cpu=cpu)


class _SingleProcess:
    """The part of ``PartialState`` that predict uses, for a run of one process."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        return None

    @contextlib.contextmanager
    def split_between_processes(self, inputs):
        yield inputs


def _share_error(state, error: BaseException | None) -> BaseException | None:
    """The main process's error (or ``None``) on every process."""
    if state.num_processes == 1:
        return error
    import torch.distributed as dist

    box = [None if error is None else (type(error) if isinstance(error, LoSamError) else PredictionError, str(error))]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return None
    if error is not None:
        return error
    kind, message = box[0]
    return kind(message)


@dataclass
class _Options:
    batch_size: int = 1
    tile: int | None = None
    overlap: float = 0.25
    overlay: bool = False
    probabilities: bool = False
    resume: bool = False
    overwrite: bool = False
    alpha: float = 0.5
    progress: bool = True
    num_workers: int | None = None
    output_format: str = "files"
    shard_size: int = 256
    fov: Any = None  # recorded in the settings


def _check_options(opt: _Options) -> None:
    if isinstance(opt.batch_size, bool) or not isinstance(opt.batch_size, int) or opt.batch_size < 1:
        raise LoSamValueError(f"batch_size must be a positive integer, got {opt.batch_size!r}")
    if opt.tile is not None:
        _check_tile(opt.tile, opt.overlap)
    if opt.output_format not in OUTPUT_FORMATS:
        raise LoSamValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {opt.output_format!r}")
    if opt.num_workers is not None and (not isinstance(opt.num_workers, int) or opt.num_workers < 0):
        raise LoSamValueError(f"num_workers must be an integer of at least 0, got {opt.num_workers!r}")
    if not isinstance(opt.shard_size, int) or opt.shard_size < 1:
        raise LoSamValueError(f"shard_size must be a positive integer, got {opt.shard_size!r}")
    if opt.resume and opt.overwrite:
        raise LoSamValueError(
            "resume and overwrite exclude each other: resume continues a folder, overwrite replaces it"
        )
    if not 0.0 <= float(opt.alpha) <= 1.0:
        raise LoSamValueError(f"alpha must be between 0 and 1, got {opt.alpha!r}")


def predict_paths(
    pipeline,
    inputs: str | os.PathLike | Sequence,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    tile: int | None = None,
    overlap: float = 0.25,
    overlay: bool = False,
    probabilities: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    recursive: bool = False,
    fov: str | os.PathLike | None = None,
    num_workers: int | None = None,
    output_format: str = "files",
    shard_size: int = 256,
    alpha: float = 0.5,
    progress: bool = True,
) -> PredictionSummary:
    """Segment every image named by ``inputs`` (files, folders, globs) and write the outputs to ``output_dir``.

    Args:
        pipeline: a :class:`losam_peft.LoSamPipeline`.
        batch_size: images per forward pass (whole-image mode) or windows per forward pass (tiled mode).
        tile, overlap: sliding-window inference with ``tile``×``tile`` windows at native resolution (see the module
            docstring for when to use it); ``None`` resizes each whole image to the model's input.
        overlay: also write ``overlays/NAME.png``; probabilities: also write ``probabilities/NAME.npz``.
        resume: skip images whose outputs already exist (their rows are kept in the summary); refused when the
            folder's ``predict_settings.json`` records another adapter or other settings.
        overwrite: replace the outputs of an earlier run in ``output_dir`` (only a folder predict wrote).
        recursive: descend into sub-folders of folder inputs (output names keep the sub-folder).
        fov: a folder of field-of-view masks matched by image stem (``S.png``, ``S_mask.gif``…); predictions
            outside the FOV are set to background (0). An image without a FOV mask there is a failed input.
        num_workers: DataLoader workers that decode and preprocess (default :func:`default_num_workers`; 0 reads on
            the main thread).
        output_format: ``"files"`` (PNG masks) or ``"dataset"`` (parquet shards of ``shard_size`` rows).
        progress: show a tqdm progress bar (the only output besides ``logging`` warnings for skipped files).

    Under ``accelerate launch`` the inputs are shared out between the processes (see the module docstring).
    Returns a :class:`PredictionSummary`; raises :class:`PredictionError` when nothing can be done (no input
    found, output folder not writable) and :class:`OutputExistsError` for a folder it may not write.
    """
    opt = _Options(batch_size=batch_size, tile=tile, overlap=overlap, overlay=overlay, probabilities=probabilities,
                   resume=resume, overwrite=overwrite, alpha=alpha, progress=progress, num_workers=num_workers,
                   output_format=output_format, shard_size=shard_size)  # fmt: skip
    _check_options(opt)
    files, ignored, missing = scan_inputs(inputs, recursive=recursive)
    if not files and not ignored:
        detail = "; ".join(f"{item}: {reason}" for item, reason in missing) or "no input given"
        raise PredictionError(f"no images to segment ({detail})")
    finder = _FovFolder(fov) if fov is not None else None
    opt.fov = None if finder is None else str(finder.folder.resolve())
    raw_inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    source = _FileSource(files, ignored, missing, finder, raw_inputs)
    return _run(pipeline, source, output_dir, opt)


def predict_dataset(
    pipeline,
    dataset,
    output_dir: str | os.PathLike,
    *,
    split: str | None = None,
    image_column: str = "image",
    id_column: str | None = None,
    fov_column: str | None = None,
    use_fov: bool = True,
    streaming: bool = False,
    batch_size: int = 1,
    tile: int | None = None,
    overlap: float = 0.25,
    overlay: bool = False,
    probabilities: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    num_workers: int | None = None,
    output_format: str = "files",
    shard_size: int = 256,
    alpha: float = 0.5,
    progress: bool = True,
) -> PredictionSummary:
    """Segment every image of a dataset: a ``datasets.Dataset`` (or ``IterableDataset``), a folder written by
    ``save_to_disk``, a data file or folder of data files, or a Hub id (``load_dataset``; ``streaming=True`` for a
    dataset that does not fit on disk).

    Args:
        split: the split to read (needed when the dataset has several).
        image_column: the column holding the images.
        id_column: the column naming each example (default ``id`` when there is one, else the row number); output
            names are the ids made safe for file names.
        fov_column: a column of FOV masks (default ``fov`` when there is one); predictions outside are set to 0.
            ``use_fov=False`` ignores it.
        The other arguments are those of :func:`predict_paths`.
    """
    opt = _Options(batch_size=batch_size, tile=tile, overlap=overlap, overlay=overlay, probabilities=probabilities,
                   resume=resume, overwrite=overwrite, alpha=alpha, progress=progress, num_workers=num_workers,
                   output_format=output_format, shard_size=shard_size)  # fmt: skip
    _check_options(opt)
    dataset, where, apart = load_input_dataset(dataset, split=split, streaming=streaming)
    import datasets

    is_iterable = isinstance(dataset, datasets.IterableDataset)
    columns = list(getattr(dataset, "column_names", None) or (dataset.features or {}).keys())
    if image_column not in columns:
        raise LoSamValueError(f"{where}: no column {image_column!r} (image_column); its columns: {', '.join(columns)}")
    if id_column is None:
        id_column = "id" if "id" in columns else None
    elif id_column not in columns:
        raise LoSamValueError(f"{where}: no column {id_column!r} (id_column); its columns: {', '.join(columns)}")
    if fov_column is None:
        fov_column = "fov" if "fov" in columns and use_fov else None
    elif fov_column not in columns:
        raise LoSamValueError(f"{where}: no column {fov_column!r} (fov_column); its columns: {', '.join(columns)}")
    if not use_fov:
        fov_column = None
    opt.fov = None if fov_column is None else f"column {fov_column}"
    if not is_iterable and len(dataset) == 0:
        raise PredictionError(f"no images to segment ({where} is empty)")
    source = _DatasetSource(dataset, where=where, image_column=image_column, id_column=id_column,
                            fov_column=fov_column, streaming=is_iterable, apart=apart)  # fmt: skip
    return _run(pipeline, source, output_dir, opt)


def load_input_dataset(dataset, split: str | None = None, streaming: bool = False):
    """``(dataset, description, local_paths)`` for :func:`predict_dataset`: a dataset object as it is, a
    ``save_to_disk`` folder through ``load_from_disk``, anything else through ``load_dataset``."""
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return _pick_split(dataset, split, "the dataset"), "the dataset", []
    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        return dataset, "the dataset", []
    text = os.path.expanduser(str(dataset))
    path = Path(text)
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(loaded, split, text)
            elif split is not None:
                logger.info("%s holds one split; split=%r is not used", text, split)
            if streaming:
                loaded = loaded.to_iterable_dataset()
            return loaded, text, [path]
        if path.is_file():
            builder = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
                       ".arrow": "arrow"}.get(path.suffix.lower())  # fmt: skip
            if builder is None:
                raise LoSamValueError(f"{text}: not a dataset file (.parquet, .csv, .json, .jsonl or .arrow)")
            loaded = datasets.load_dataset(builder, data_files=str(path), streaming=streaming)
        else:
            loaded = datasets.load_dataset(text, split=split, streaming=streaming)
    except LoSamError:
        raise
    except Exception as err:
        raise DataError(f"cannot load the dataset {text}: {type(err).__name__}: {err}".splitlines()[0], path) from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded = _pick_split(loaded, split, text)
    return loaded, text, [path] if path.exists() else []


def _pick_split(dataset, split, where):
    names = list(dataset.keys())
    if split is None:
        if len(names) == 1:
            return dataset[names[0]]
        raise LoSamValueError(f"{where} has the splits {', '.join(names)}; choose one with split=... (--split)")
    if split not in dataset:
        raise LoSamValueError(f"{where} has no split {split!r}; its splits: {', '.join(names)}")
    return dataset[split]


def _plan(output_dir: Path, source, opt: _Options, fraction_columns, id2label):
    """What is done and what is to do (computed the same way by every process before anyone writes)."""
    previous = _read_previous_rows(output_dir) if opt.resume else {}
    previous_by_name = {row.get("name"): file for file, row in previous.items()}
    stored = _dataset_ids(output_dir) if opt.resume and opt.output_format == "dataset" else set()
    resumed: list[dict] = []
    todo: list[_Item] = []
    for item in source.items or []:
        owner = previous_by_name.get(item.name)
        same_source = (
            owner is None
            or owner == item.key
            or (isinstance(item.source, Path) and Path(owner).resolve() == item.source.resolve())
        )
        if not opt.resume or not same_source:
            todo.append(item)
            continue
        if opt.output_format == "dataset":
            done = source.item_id(item) in stored
            mask_path = None
        else:
            targets = _targets(output_dir, item.name, opt.overlay, opt.probabilities)
            done = all(p.is_file() for p in targets.values())
            mask_path = targets["mask"]
        if done:
            resumed.append(_resumed_row(item, mask_path, previous.get(item.key), id2label, fraction_columns))
        else:
            todo.append(item)
    skip = set(stored)
    if source.streaming and opt.resume and opt.output_format == "files":
        skip = {row.get("name") for row in previous.values()}
        skip = {n for n in skip if n and (output_dir / MASKS_DIR / f"{n}.png").is_file()}
        resumed = [dict(row, status="resumed") for row in previous.values() if row.get("name") in skip]
    elif source.streaming:
        resumed = [dict(row, status="resumed") for row in previous.values() if row.get("file") in stored]
    return todo, resumed, skip


def _run(pipe, source, output_dir, opt: _Options) -> PredictionSummary:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if pipe.num_labels > 256:
        raise PredictionError(
            f"the model has {pipe.num_labels} labels; masks are written as palette PNGs, which hold at most 256 "
            "classes (ids 0-255)"
        )
    state = process_state(pipe.device)
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    check_apart(output_dir, source.apart, what="output folder")  # before anything is created there
    output_dir = check_output_dir(output_dir)
    csv_path = output_dir / SUMMARY_NAME
    mode = (
        f"tiles of {opt.tile} px, overlap {opt.overlap:g}" if opt.tile else f"whole image resized to {pipe.image_size}"
    )
    summary = PredictionSummary(output_dir=output_dir, csv_path=csv_path, mode=mode, num_processes=world,
                                is_main=main, output_format=opt.output_format)  # fmt: skip
    id2label = pipe.id2label
    fraction_columns = [_column(id2label.get(i, str(i))) for i in range(1, pipe.num_labels)]
    columns = _summary_columns(fraction_columns)
    start_time = time.perf_counter()
    with contextlib.ExitStack() as stack:
        error = None
        if main:
            try:
                stack.enter_context(output_lock(output_dir))
                settings = prediction_settings(pipe, tile=opt.tile, overlap=opt.overlap, fov=opt.fov, alpha=opt.alpha)
                settings.update(output_format=opt.output_format)
                settings = {"written_by": "losam-peft predict", "version": __version__, **settings}
                _prepare_folder(output_dir, settings, resume=opt.resume, overwrite=opt.overwrite)
            except Exception as err:
                error = err
        error = _share_error(state, error)
        if error is not None:
            raise error
        todo, resumed, skip = _plan(output_dir, source, opt, fraction_columns, id2label)
        state.wait_for_everyone()  # everyone has looked at the folder before anyone writes to it
        journal = _Journal(csv_path if rank == 0 else _part_path(output_dir, rank), columns)
        if opt.output_format == "dataset":
            sink = _DatasetSink(output_dir, journal, opt.overlay, opt.probabilities, rank, opt.shard_size)
        else:
            sink = _FileSink(output_dir, journal, opt.overlay, opt.probabilities)
        if source.streaming:
            mine = None
            reader = _StreamReader(source, pipe.image_processor, opt.tile is None, rank, world, skip)
        else:
            with state.split_between_processes(todo) as share:
                mine = list(share)
            reader = _MapReader(source, mine, pipe.image_processor, opt.tile is None)
        finished = False
        try:
            with logging_redirect_tqdm(loggers=[logger]):
                bar = tqdm(total=None if mine is None else len(mine), unit="img", disable=not (opt.progress and main),
                           desc="losam predict" + (f" (process 0 of {world})" if world > 1 else ""),
                           dynamic_ncols=True)  # fmt: skip
                with bar:
                    _execute(pipe, reader, sink, opt, rank, world, bar, fraction_columns)
            finished = True
        finally:
            sink.close()
            summary.seconds = time.perf_counter() - start_time
            if world == 1 or finished:
                if world > 1:
                    state.wait_for_everyone()  # every part is complete
                if main:
                    rows = _merge(output_dir, source, resumed, sink.rows, world)
                    _write_csv(csv_path, rows, fraction_columns)
                    for part in sorted(output_dir.glob(f"{_PART_PREFIX}*.csv")):
                        part.unlink()
                else:
                    rows = list(sink.rows)
                _count(summary, rows)
            else:
                _count(summary, list(resumed) + list(sink.rows) + list(source.carried))
    summary.ignored = list(source.ignored)
    return summary


def _count(summary: PredictionSummary, rows: list[dict]) -> None:
    summary.rows = rows
    summary.processed = sum(r.get("status") == "ok" for r in rows)
    summary.resumed = sum(r.get("status") == "resumed" for r in rows)
    summary.failed = [(r["file"], r.get("error", "")) for r in rows if r.get("status") == "failed"]


def _merge(output_dir: Path, source, resumed: list[dict], own_rows: list[dict], world: int) -> list[dict]:
    """One summary in input order: failed/ignored inputs, then per input its resumed row or this run's row."""
    new_rows = list(own_rows)
    for rank in range(1, world):
        new_rows.extend(_read_rows(_part_path(output_dir, rank)))
    if source.items is None:  # streamed: in the order the processes finished them
        return list(source.carried) + list(resumed) + new_rows
    order = {item.key: item.index for item in source.items}
    body = sorted(list(resumed) + new_rows, key=lambda r: order.get(r.get("file"), len(order)))
    return list(source.carried) + body


def _execute(pipe, reader, sink, opt: _Options, rank: int, world: int, bar, fraction_columns) -> None:
    whole = opt.tile is None
    workers = default_num_workers(world) if opt.num_workers is None else opt.num_workers
    on_cuda = pipe.device.type == "cuda"
    step = opt.batch_size if whole else 1
    loader = torch.utils.data.DataLoader(
        reader, batch_size=step, shuffle=False, num_workers=workers, collate_fn=_collate, pin_memory=on_cuda,
        prefetch_factor=2 if workers else None,
    )  # fmt: skip
    finish = _Finisher(pipe, opt, rank, fraction_columns)
    pending: collections.deque = collections.deque()
    failed = [0]

    def settle(limit: int) -> None:
        while len(pending) > limit:
            count, future = pending.popleft()
            failures = future.result()  # re-raises what went wrong in the writer
            bar.update(count)
            if failures:
                failed[0] += failures
                bar.set_postfix(failed=failed[0])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="losam-writer") as writer:
        try:
            for batch in loader:
                records = batch["records"]
                good = [r for r in records if "error" not in r]
                jobs: list[tuple[dict, Any, int, float]] = []  # (record, probabilities or logits, tiles, seconds)
                for record in records:
                    if "error" in record:
                        jobs.append((record, None, 0, 0.0))
                if good and whole:
                    jobs.extend(_forward_whole(pipe, good, batch.get("pixel_values")))
                elif good:
                    for record in good:
                        started = time.perf_counter()
                        try:
                            probs, tiles = tiled_probabilities(pipe.forward_probabilities, record["array"],
                                                               tile=opt.tile, overlap=opt.overlap,
                                                               batch_size=opt.batch_size)  # fmt: skip
                            jobs.append((record, ("probabilities", probs), tiles, time.perf_counter() - started))
                        except Exception as err:
                            record["error"] = _reason(err, record["item"].key)
                            jobs.append((record, None, 0, 0.0))
                pending.append((len(records), writer.submit(finish.run, jobs, sink)))
                settle(2)
            settle(0)
        finally:
            with contextlib.suppress(Exception):
                settle(0)


def _forward_whole(pipe, records: list[dict], pixel_values) -> list[tuple]:
    """One batched forward pass; a batch that fails is retried image by image so that one bad image is isolated."""
    started = time.perf_counter()
    try:
        logits = pipe.forward_logits(pixel_values)
        shared = (time.perf_counter() - started) / len(records)
        return [(r, ("logits", logits[i : i + 1]), 1, shared) for i, r in enumerate(records)]
    except Exception as err:
        if len(records) == 1:
            records[0]["error"] = _reason(err, records[0]["item"].key)
            return [(records[0], None, 0, 0.0)]
    jobs = []
    for i, record in enumerate(records):
        one = time.perf_counter()
        try:
            logits = pipe.forward_logits(pixel_values[i : i + 1])
            jobs.append((record, ("logits", logits), 1, time.perf_counter() - one))
        except Exception as err:
            record["error"] = _reason(err, record["item"].key)
            jobs.append((record, None, 0, 0.0))
    return jobs


class _Finisher:
    """Runs in the writer thread: logits back to the image's size, FOV, the files (or dataset rows), the row."""

    def __init__(self, pipe, opt: _Options, rank: int, fraction_columns: list[str]):
        self.pipe, self.opt, self.rank, self.fraction_columns = pipe, opt, rank, fraction_columns

    def run(self, jobs, sink) -> int:
        failures = 0
        for record, output, tiles, seconds in jobs:
            item = record["item"]
            if output is not None:
                started = time.perf_counter()
                try:
                    row, outputs = self._finish(record, output, tiles)
                    row["seconds"] = f"{record['read_seconds'] + seconds + time.perf_counter() - started:.3f}"
                except Exception as err:
                    record["error"] = _reason(err, item.key)
                    output = None
            if output is None:
                row = {"file": item.key, "name": item.name, "status": "failed", "process": self.rank,
                       "error": record.get("error", "unknown error")}  # fmt: skip
                outputs = None
                logger.warning("skipped %s: %s", item.key, row["error"])
            failures += sink.add(row, outputs)["status"] == "failed"
        return failures

    def _finish(self, record: dict, output, tiles: int) -> tuple[dict, dict]:
        pipe, opt, item = self.pipe, self.opt, record["item"]
        kind, value = output
        height, width = record["size"]
        if kind == "logits":
            probs = pipe.image_processor.post_process_probabilities(value, target_sizes=[(height, width)])[0]
        else:
            probs = value
        label_map = _label_map(probs)
        fov = record.get("fov")
        if fov is not None:
            outside = ~np.asarray(fov, dtype=bool)
            label_map[outside] = 0
            if opt.probabilities:
                probs = probs.clone()
                probs[:, torch.from_numpy(outside)] = 0.0
                probs[0, torch.from_numpy(outside)] = 1.0
        outputs: dict[str, Any] = {"mask": _png_bytes(label_map_to_pil(label_map, pipe.num_labels))}
        if opt.overlay:
            outputs["overlay"] = _png_bytes(pipe.overlay(record["array"], label_map, opt.alpha))
        if opt.probabilities:
            array = probs.numpy()
            if opt.output_format == "dataset":
                outputs["probabilities_array"] = array.astype(np.float16)
            else:
                outputs["probabilities"] = _npz_bytes(array, pipe.id2label)
        if opt.output_format == "dataset":
            outputs["id"] = item.key if isinstance(item.source, (int, dict)) or item.source is None else item.name
        row = {"file": item.key, "name": item.name, "status": "ok", "width": width, "height": height,
               "tiles": tiles, "process": self.rank, "note": record.get("note", "")}  # fmt: skip
        counts = np.bincount(label_map.ravel(), minlength=pipe.num_labels)
        total = max(1, label_map.size)
        for i, column in enumerate(self.fraction_columns, start=1):
            row[column] = f"{counts[i] / total:.6f}"
        return row, outputs


def _label_map(probs: torch.Tensor) -> np.ndarray:
    return class_map(probs, torch.uint8).numpy()


def _resumed_row(item: _Item, mask_path, previous, id2label, fraction_columns) -> dict:
    if previous:
        row = dict(previous)
        row.update(file=item.key, name=item.name, status="resumed")
        return row
    row = {"file": item.key, "name": item.name, "status": "resumed"}
    if mask_path is None:
        return row
    try:
        from PIL import Image

        with Image.open(mask_path) as mask:
            label_map = np.asarray(mask)
        counts = np.bincount(label_map.ravel(), minlength=len(id2label))
        row.update(width=label_map.shape[1], height=label_map.shape[0])
        for i, column in enumerate(fraction_columns, start=1):
            row[column] = f"{counts[i] / max(1, label_map.size):.6f}"
    except Exception as err:  # an unreadable old mask: keep the row, say why the numbers are missing
        row["note"] = f"previous mask unreadable ({err})"
    return row


def _reason(err: BaseException, path) -> str:
    text = str(err)
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    if isinstance(err, MemoryError):
        return "out of memory (try a smaller --tile or --batch-size 1)"
    if isinstance(err, RuntimeError) and "out of memory" in text.lower():
        return f"out of memory on the device (try --tile 1024 or --batch-size 1): {text.splitlines()[0]}"
    return text or type(err).__name__


def summary_to_json(summary: PredictionSummary) -> str:
    """The summary as JSON (for scripts)."""
    return json.dumps(
        {
            "output_dir": str(summary.output_dir),
            "csv": str(summary.csv_path),
            "mode": summary.mode,
            "processed": summary.processed,
            "resumed": summary.resumed,
            "failed": [list(x) for x in summary.failed],
            "ignored": [list(x) for x in summary.ignored],
            "seconds": round(summary.seconds, 3),
            "num_processes": summary.num_processes,
        },
        indent=1,
    )


# -- several local processes -------------------------------------------------------------------------------------------
def in_distributed_launch() -> bool:
    """Whether this process was started by ``accelerate launch``, ``torchrun`` or :func:`launch_processes`."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        with contextlib.suppress(ValueError):
            if int(os.environ.get(name, "1")) > 1:
                return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_processes(arguments: Sequence[str], num_processes: int, module: str = "losam_peft.cli") -> int:
    """Run ``python -m MODULE *arguments`` in ``num_processes`` local processes set up as one distributed job
    (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, what Accelerate's ``PartialState``
    reads), the way ``accelerate launch`` or ``torchrun`` would. Returns the main process's exit status, or the first
    abnormal status (anything but 0 and 1) of any process, after stopping the others."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise LoSamValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    base = dict(os.environ)
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(num_processes),
                LOCAL_WORLD_SIZE=str(num_processes))  # fmt: skip
    if "OMP_NUM_THREADS" not in base:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        base["OMP_NUM_THREADS"] = str(max(1, cpus // num_processes))
    command = [sys.executable, "-m", module, *arguments]
    procs = []
    try:
        for rank in range(num_processes):
            env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            procs.append(subprocess.Popen(command, env=env))
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c is not None and c not in (0, 1)]
            if bad:
                _stop(procs)
                return bad[0]
            if all(c is not None for c in codes):
                return codes[0]
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, signal.SIGINT)
        return 130


def _stop(procs, sig=signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(sig)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
