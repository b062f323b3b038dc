"""Batch prediction over files, folders and globs: masks, overlays, probabilities and a summary CSV.

``losam predict`` is a thin wrapper over :func:`predict_paths`::

    losam predict --adapter ADAPTER --input images/ --output predictions/

Outputs (all written atomically: a temporary file in the same folder, then ``os.replace``):

* ``masks/NAME.png``: one palette PNG per image whose pixel values are the class ids (0 = background),
* ``overlays/NAME.png`` (``overlay=True``): the image with the predicted classes drawn over it,
* ``probabilities/NAME.npz`` (``probabilities=True``): ``probabilities`` (num_labels, H, W) float16 and ``labels``,
* ``summary.csv``: per image the size, the fraction of pixels of each foreground class, the seconds it took, the
  number of tiles, a note on conversions (CMYK, 16-bit) and, for skipped files, the reason.

Files that cannot be read (non-images, truncated files) are skipped, reported in the summary and counted; they
never abort the run. ``resume=True`` skips images whose outputs already exist.

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

import csv
import glob
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)
from .data.io import split_image_name
from .errors import LoSamValueError, PredictionError
from .image_processing_losam import decode_array

# tiling lives in losam_peft.tiling; the old names stay importable from here
from .tiling import _check_tile, blend_weights, count_tiles, tile_starts, tiled_probabilities  # noqa: F401

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PROBABILITIES_DIR = "probabilities"
_GLOB_CHARS = re.compile(r"[*?\[]")


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


@dataclass
class PredictionSummary:
    """What :func:`predict_paths` did. ``describe()`` gives a few lines to print."""

    output_dir: Path
    csv_path: Path
    mode: str
    processed: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.processed + self.resumed + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        lines = [
            f"{self.processed} image(s) segmented ({self.mode}) in {self.seconds:.1f} s"
            + (f", {self.resumed} already done (resume)" if self.resumed else ""),
            f"masks in {self.output_dir / MASKS_DIR}, summary in {self.csv_path}",
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} file(s) could not be segmented:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        if self.ignored:
            lines.append(f"{len(self.ignored)} non-image file(s) ignored:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.ignored)
        return "\n".join(lines)


def _read_previous_rows(csv_path: Path) -> dict[str, dict]:
    if not csv_path.is_file():
        return {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            return {row["file"]: row for row in csv.DictReader(handle) if row.get("status") in ("ok", "resumed")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError):
        return {}


def _write_csv(csv_path: Path, rows: list[dict], fraction_columns: list[str]) -> None:
    columns = ["file", "name", "status", "width", "height", *fraction_columns, "seconds", "tiles", "note", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    atomic_write_bytes(csv_path, buffer.getvalue().encode("utf-8"))


# -- the run -----------------------------------------------------------------------------------------------------------
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
    recursive: bool = False,
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
        resume: skip images whose outputs already exist (their rows are kept in the summary).
        recursive: descend into sub-folders of folder inputs (output names keep the sub-folder).
        progress: show a tqdm progress bar (the only output besides ``logging`` warnings for skipped files).

    Returns a :class:`PredictionSummary`; raises :class:`PredictionError` when nothing can be done (no input
    found, output folder not writable).
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise LoSamValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if tile is not None:
        _check_tile(tile, overlap)
    files, ignored, missing = scan_inputs(inputs, recursive=recursive)
    if not files and not ignored:
        detail = "; ".join(f"{item}: {reason}" for item, reason in missing) or "no input given"
        raise PredictionError(f"no images to segment ({detail})")
    output_dir = check_output_dir(output_dir)
    csv_path = output_dir / SUMMARY_NAME
    mode = f"tiles of {tile} px, overlap {overlap:g}" if tile else f"whole image resized to {pipeline.image_size}"
    summary = PredictionSummary(output_dir=output_dir, csv_path=csv_path, mode=mode)
    summary.ignored = list(ignored)
    id2label = pipeline.id2label
    if pipeline.num_labels > 256:
        raise PredictionError(
            f"the model has {pipeline.num_labels} labels; masks are written as palette PNGs, which hold at most 256 "
            "classes (ids 0-255)"
        )
    fraction_columns = [_column(id2label.get(i, str(i))) for i in range(1, pipeline.num_labels)]
    previous = _read_previous_rows(csv_path) if resume else {}
    rows: list[dict] = []
    for item, reason in missing:
        summary.failed.append((item, reason))
        rows.append({"file": item, "status": "failed", "error": reason})
    for path, reason in ignored:
        rows.append({"file": path, "status": "ignored", "error": reason})

    previous_by_name = {row.get("name"): file for file, row in previous.items()}

    def outputs_of(name: str) -> dict[str, Path]:
        out = {"mask": output_dir / MASKS_DIR / f"{name}.png"}
        if overlay:
            out["overlay"] = output_dir / OVERLAYS_DIR / f"{name}.png"
        if probabilities:
            out["probabilities"] = output_dir / PROBABILITIES_DIR / f"{name}.npz"
        return out

    todo: list[tuple[Path, str]] = []
    for path, name in files:
        targets = outputs_of(name)
        owner = previous_by_name.get(name)
        same_source = owner is None or Path(owner).resolve() == path.resolve()
        if resume and same_source and all(p.is_file() for p in targets.values()):
            rows.append(_resumed_row(path, name, targets["mask"], previous.get(str(path)), id2label, fraction_columns))
            summary.resumed += 1
        else:
            todo.append((path, name))

    start_time = time.perf_counter()
    step = 1 if tile else batch_size
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            bar = tqdm(total=len(todo), unit="img", desc="losam predict", disable=not progress, dynamic_ncols=True)
            with bar:
                for start in range(0, len(todo), step):
                    chunk = todo[start : start + step]
                    for row in _run_chunk(
                        pipeline, chunk, outputs_of, tile, overlap, batch_size, alpha, fraction_columns
                    ):
                        rows.append(row)
                        if row["status"] == "ok":
                            summary.processed += 1
                        else:
                            summary.failed.append((row["file"], row["error"]))
                            logger.warning("skipped %s: %s", row["file"], row["error"])
                    bar.update(len(chunk))
                    if summary.failed:
                        bar.set_postfix(failed=len(summary.failed))
    finally:
        summary.seconds = time.perf_counter() - start_time
        summary.rows = rows
        _write_csv(csv_path, rows, fraction_columns)
    return summary


def _resumed_row(path, name, mask_path, previous, id2label, fraction_columns) -> dict:
    if previous:
        row = dict(previous)
        row.update(file=str(path), name=name, status="resumed")
        return row
    row = {"file": str(path), "name": name, "status": "resumed"}
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


def _run_chunk(pipeline, chunk, outputs_of, tile, overlap, batch_size, alpha, fraction_columns) -> list[dict]:
    """Read, segment and write one batch; every failure becomes a row, never an exception."""
    rows, loaded = [], []
    for path, name in chunk:
        started = time.perf_counter()
        try:
            image, note = decode_array(path)  # the image processor's decoder: the pixels the model sees
            loaded.append((path, name, image, note, time.perf_counter() - started))
        except Exception as err:
            rows.append({"file": str(path), "name": name, "status": "failed", "error": _reason(err, path)})
    if not loaded:
        return rows
    started = time.perf_counter()
    try:
        results = pipeline.predict_loaded(
            [item[2] for item in loaded],
            batch_size=batch_size,
            return_probabilities=True,
            tile=tile,
            overlap=overlap,
        )
        shared = (time.perf_counter() - started) / len(loaded)
        timed = [(item, result, shared) for item, result in zip(loaded, results)]
    except Exception as err:
        if len(loaded) == 1:
            path, name = loaded[0][0], loaded[0][1]
            rows.append({"file": str(path), "name": name, "status": "failed", "error": _reason(err, path)})
            return rows
        timed = []  # isolate the image that broke the batch
        for item in loaded:
            one = time.perf_counter()
            try:
                result = pipeline.predict_loaded(
                    [item[2]], batch_size=batch_size, return_probabilities=True, tile=tile, overlap=overlap
                )[0]
                timed.append((item, result, time.perf_counter() - one))
            except Exception as item_err:
                rows.append(
                    {"file": str(item[0]), "name": item[1], "status": "failed", "error": _reason(item_err, item[0])}
                )
    for (path, name, image, note, read_seconds), result, seconds in timed:
        write_started = time.perf_counter()
        targets = outputs_of(name)
        try:
            if "probabilities" in targets:
                atomic_write_bytes(targets["probabilities"], _npz_bytes(result.probabilities, result.id2label))
            if "overlay" in targets:
                atomic_write_bytes(targets["overlay"], _png_bytes(pipeline.overlay(image, result.label_map, alpha)))
            # the mask last: its presence marks the image as done for --resume
            atomic_write_bytes(targets["mask"], _png_bytes(result.to_pil()))
        except OSError as err:
            rows.append(
                {
                    "file": str(path),
                    "name": name,
                    "status": "failed",
                    "error": f"cannot write outputs: {err.strerror or err}",
                }
            )
            continue
        height, width = result.size
        row = {
            "file": str(path),
            "name": name,
            "status": "ok",
            "width": width,
            "height": height,
            "seconds": f"{read_seconds + seconds + time.perf_counter() - write_started:.3f}",
            "tiles": result.tiles,
            "note": note,
        }
        fractions = result.foreground_fractions()
        for i, column in enumerate(fraction_columns, start=1):
            value = fractions.get(result.id2label.get(i, str(i)), 0.0)
            row[column] = f"{value:.6f}"
        rows.append(row)
        result.probabilities = None  # free the memory early
    return rows


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
        },
        indent=1,
    )


# -- the measurement behind the default --------------------------------------------------------------------------------
