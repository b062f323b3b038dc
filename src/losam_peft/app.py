"""The web app's work (``losam app``), as plain functions with no Gradio in them.

The page itself is :mod:`losam_peft.app_ui` (the only module that imports Gradio, an optional extra); everything it
does is here, on top of the library's own API, so that it can be used and tested without a browser:

* **label** one image: :func:`parse_labels` (user-named classes), :func:`mask_from_editor` (the painted layers of an
  image editor to a class-id map: one palette colour per class, background black; unpainted pixels keep an uploaded
  mask, or are background), :func:`read_mask_file` (an uploaded mask, by the package's one mask rule),
  :func:`label_preview` (the overlay) and :func:`save_shot` (the labelled image kept in the app's working folder);
* **train**: :func:`train_from_painted_mask` calls :func:`losam_peft.training.train` on that one shot, reporting every
  step and stopping on request (the checkpoint of the last finished step is kept, and a later call with
  ``resume=True`` continues from it); :class:`TrainingJob` runs it in a child process so that the page never blocks
  and one app trains one thing at a time;
* **segment**: :func:`segment_images` runs :func:`losam_peft.predict.predict_paths` (masks, overlays, ``summary.csv``)
  and :func:`zip_results` packs them;
* **take it home**: :func:`zip_adapter`, :func:`load_adapter_zip`, :func:`hub_status` and :func:`push` (the Hub
  upload of :func:`losam_peft.hub.push_adapter`).

Everything the app writes goes into one :class:`Workspace` folder. A path that comes from the browser is trusted
only when it lies inside that folder (:meth:`Workspace.check_inside`, for uploads); the server-side folder to
segment and a base or adapter to load are read, never written.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .adapters import load_adapter, read_adapter_config
from .atomic import atomic_save, atomic_write_json, check_output_dir
from .constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME, IMAGE_PROCESSOR_NAME
from .data.samples import Sample, read_mask
from .errors import AdapterFolderError, DataError, LoSamError, LoSamValueError, TrainingError
from .hub import push_adapter
from .image_processing_losam import decode_array, to_rgb8
from .labels import normalise_id2label
from .modeling_losam import SamForSemanticSegmentation, sam_vision_config
from .pipeline import LoSamPipeline
from .predict import MASKS_DIR, OVERLAYS_DIR, SUMMARY_NAME, predict_paths, scan_inputs
from .training import CHECKPOINT_DIR, CHECKPOINT_META, PRESETS, TrainingConfig, TrainingResult, train
from .visualization import label_map_to_pil, overlay, palette

__all__ = [
    "BUNDLED_BASES",
    "DEFAULT_BASE",
    "DEFAULT_STEPS",
    "EXTRA_HINT",
    "SegmentationRun",
    "TrainingJob",
    "Workspace",
    "bundled_base",
    "class_colours",
    "check_server_path",
    "class_fractions",
    "hub_status",
    "label_preview",
    "load_adapter_zip",
    "mask_from_editor",
    "parse_labels",
    "push",
    "read_mask_file",
    "resolve_base",
    "save_shot",
    "segment_images",
    "server_folder_images",
    "train_from_painted_mask",
    "zip_adapter",
    "zip_folder",
    "zip_results",
]

logger = logging.getLogger(__name__)

#: encoders built from the package's bundled configurations with seeded *random* weights (no download): ``demo`` is
#: the one ``losam demo`` trains on (256 px), ``tiny`` a smaller one (128 px) for quick checks
BUNDLED_BASES = {"demo": "demo", "tiny": "tiny"}
DEFAULT_BASE = "demo"
DEFAULT_STEPS = 100
#: what to install when the page's extra is missing
EXTRA_HINT = "pip install 'losam-peft[app]'"
#: the seed of a bundled encoder's random weights (the same encoder in every working folder)
BUNDLED_SEED = 0
#: pixels of an editor layer at least this opaque (0-255) are painted
PAINTED_ALPHA = 32
#: how painted strokes look over the image in the editor (the colour decides the class, not the opacity)
STROKE_OPACITY = 0.6
#: the files of an adapter folder that its zip holds (when present)
ADAPTER_ZIP_FILES = (
    ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, IMAGE_PROCESSOR_NAME, CARD_NAME, "metrics.json", "train_config.json",
    "history.json", "loss_curve.png",
)  # fmt: skip
#: where a zipped adapter keeps its bundled base encoder (only for adapters trained on a bundled encoder)
ZIP_BASE_DIR = "base-encoder"
_BASE_FILES = ("config.json", "model.safetensors")


# -- the working folder ------------------------------------------------------------------------------------------------
class Workspace:
    """The one folder the app writes to: uploads (Gradio's cache), labelled shots, training runs, segmentations,
    zips and the bundled encoders, each in its own sub-folder."""

    KINDS = ("uploads", "shots", "runs", "results", "exports", "adapters", "bases")

    def __init__(self, root: str | os.PathLike):
        root = check_output_dir(root, "app's working folder")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def folder(self, kind: str) -> Path:
        if kind not in self.KINDS:
            raise LoSamValueError(f"unknown working-folder kind {kind!r}; known: {', '.join(self.KINDS)}")
        path = self.root / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def uploads(self) -> Path:
        return self.folder("uploads")

    def new_folder(self, kind: str, prefix: str = "") -> Path:
        """A fresh, empty sub-folder of ``kind`` named by time and a counter (never one that exists)."""
        with self._lock:
            while True:
                name = f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):03d}"
                path = self.folder(kind) / name
                if not path.exists():
                    path.mkdir()
                    return path

    def check_inside(self, path: str | os.PathLike, what: str = "uploaded file") -> Path:
        """``path`` resolved, refused unless it lies inside the working folder (paths sent by a browser)."""
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_relative_to(self.root):
            raise LoSamValueError(f"{path}: the {what} is not inside the app's working folder {self.root}; refused")
        if not resolved.is_file():
            raise DataError(f"{path}: the {what} does not exist", path)
        return resolved


# -- labels and masks --------------------------------------------------------------------------------------------------
def parse_labels(text: str | Sequence[str]) -> dict[int, str]:
    """Class names as the user types them (``"vessel"``, ``"MA, HE, EX"``) to ``id2label``; background is class 0
    (naming it first is allowed)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise LoSamValueError("name at least one class to segment (e.g. vessel, or MA, HE, EX for lesions)")
    seen = {"background"}
    for name in names:
        if name.lower() in seen:
            raise LoSamValueError(f"the class name {name!r} is given twice (background is always class 0)")
        seen.add(name.lower())
    if len(names) > 254:
        raise LoSamValueError(f"{len(names)} classes: masks hold at most 255 classes besides background")
    return normalise_id2label(["background", *names])


def class_colours(num_labels: int) -> list[str]:
    """The brush colour of each class (hex), background (black) first: the palette that masks and overlays use."""
    return ["#%02x%02x%02x" % tuple(int(v) for v in colour) for colour in palette(num_labels)]


def _layer_array(layer) -> np.ndarray:
    array = np.asarray(layer)
    if array.ndim == 2:  # a grey layer: painted where non-zero, class 1
        return np.dstack([np.zeros(array.shape + (3,), np.uint8), (array > 0).astype(np.uint8) * 255])
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise LoSamValueError(f"an editor layer must be H×W×4 (RGBA), got shape {array.shape}")
    if array.shape[2] == 3:  # no alpha: painted where not black
        alpha = (array.max(axis=2) > 0).astype(np.uint8) * 255
        array = np.dstack([array, alpha])
    return array.astype(np.uint8, copy=False)


def mask_from_editor(
    value, num_labels: int, size: tuple[int, int] | None = None, base: np.ndarray | None = None
) -> np.ndarray:
    """The class-id map (``(H, W)`` uint8) painted in an image editor.

    ``value`` is the editor's value (a mapping with ``"layers"``: RGBA arrays or PIL images, as Gradio's ImageEditor
    gives them; ``"background"`` gives the size when there are no layers) or a list of layers. A pixel is painted
    where a layer is at least :data:`PAINTED_ALPHA` opaque; its class is the class whose palette colour
    (:func:`class_colours`; background's is black) is nearest. Later layers cover earlier ones. Unpainted (and
    erased) pixels keep ``base`` (an uploaded mask being corrected), or are background without one. ``size``
    ``(H, W)`` is the image's: layers of another size (a scaled canvas) are resized to it, nearest neighbour; a
    different aspect ratio is refused.
    """
    if num_labels < 2:
        raise LoSamValueError(f"num_labels must be at least 2, got {num_labels}")
    layers = list(value.get("layers") or []) if isinstance(value, Mapping) else list(value or [])
    if size is None and base is not None:
        size = np.asarray(base).shape[:2]
    if size is None:
        background = value.get("background") if isinstance(value, Mapping) else None
        if layers:
            size = np.asarray(layers[0]).shape[:2]
        elif background is not None:
            size = np.asarray(background).shape[:2]
        else:
            raise LoSamValueError("nothing to read a mask from: the editor holds no image")
    height, width = int(size[0]), int(size[1])
    if base is None:
        mask = np.zeros((height, width), np.uint8)
    else:
        mask = np.array(base, dtype=np.uint8)
        if mask.shape != (height, width):
            raise LoSamValueError(f"the mask being corrected is {mask.shape[::-1]} but the image {(width, height)}")
    colours = palette(num_labels).astype(np.int32)
    for layer in layers:
        rgba = _layer_array(layer)
        if rgba.shape[:2] != (height, width):
            rgba = _resize_layer(rgba, height, width)
        painted = rgba[..., 3] >= PAINTED_ALPHA
        if not painted.any():
            continue
        rgb = rgba[..., :3][painted].astype(np.int32)
        distance = ((rgb[:, None, :] - colours[None, :, :]) ** 2).sum(axis=2)
        mask[painted] = distance.argmin(axis=1).astype(np.uint8)
    return mask


def _resize_layer(rgba: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = rgba.shape[:2]
    if abs(h / w - height / width) > 0.02:
        raise LoSamValueError(
            f"the painted layer is {w}×{h} pixels but the image is {width}×{height}; paint on the image itself"
        )
    return np.asarray(Image.fromarray(rgba, "RGBA").resize((width, height), Image.NEAREST))


def read_mask_file(path: str | os.PathLike, num_labels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """An uploaded mask file as class ids (:func:`losam_peft.data.samples.read_mask`: 0/255, 0/1 and 1-bit masks are
    background/foreground, grey or palette masks with more values hold class ids, RGB masks use the package's
    palette; values outside the labels are refused there), checked against the image's size ``(H, W)``. Pixels
    marked 255 (ignore) become background: the page labels classes only."""
    mask = read_mask(path, num_labels)
    name = Path(path).name
    if size is not None and tuple(mask.shape) != tuple(size):
        raise DataError(
            f"{name}: the mask is {mask.shape[1]}×{mask.shape[0]} pixels but the image is {size[1]}×{size[0]}", path
        )
    return np.where(mask == 255, 0, mask).astype(np.uint8)


def label_preview(image, mask: np.ndarray | None, num_labels: int, alpha: float = 0.5):
    """The image (anything the decoder reads) with the mask drawn over it, a PIL image."""
    rgb = to_rgb8(image)
    if mask is None:
        mask = np.zeros(rgb.shape[:2], np.uint8)
    return overlay(rgb, mask, alpha=alpha, num_labels=num_labels)


def class_fractions(mask: np.ndarray, id2label: Mapping[int, str]) -> dict[str, float]:
    """Fraction of the pixels of each non-background class."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(id2label))
    total = max(1, int(np.asarray(mask).size))
    return {id2label[i]: float(counts[i]) / total for i in range(1, len(id2label))}


def save_shot(workspace: Workspace, image_path: str | os.PathLike, mask: np.ndarray, id2label: Mapping) -> Path:
    """Keep the labelled image in the working folder: ``shots/<run>/`` with a copy of the image file, ``mask.png``
    (class ids as a palette PNG) and ``labels.json``; returns the copied image's path."""
    source = Path(image_path)
    image, _ = decode_array(source)
    mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(image.shape[:2]):
        raise DataError(f"{source.name}: the mask is {mask.shape[::-1]} but the image {image.shape[1::-1]}", source)
    folder = workspace.new_folder("shots")
    target = folder / source.name
    atomic_save(target, lambda temp: shutil.copyfile(source, temp))
    atomic_save(folder / "mask.png", label_map_to_pil(mask, len(id2label)).save)
    atomic_write_json(folder / "labels.json", {str(k): v for k, v in normalise_id2label(id2label).items()})
    return target


# -- bases ---------------------------------------------------------------------------------------------------------------
def bundled_base(name: str, workspace: Workspace) -> Path:
    """The folder of a bundled encoder (:data:`BUNDLED_BASES`), built once per working folder with seeded random
    weights and written atomically (a folder moved into place)."""
    if name not in BUNDLED_BASES:
        raise LoSamValueError(f"unknown bundled encoder {name!r}; known: {', '.join(BUNDLED_BASES)}")
    target = workspace.folder("bases") / f"{name}-encoder"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch

    with workspace._lock:
        if (target / "config.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(BUNDLED_SEED)
            try:
                SamForSemanticSegmentation(sam_vision_config(BUNDLED_BASES[name])).save_pretrained(staging)
            finally:
                torch.random.set_rng_state(generator_state)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_adapter_folder(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG_NAME).is_file()


def resolve_base(base: str | None, workspace: Workspace) -> tuple[str, str | None]:
    """``(base checkpoint, adapter to continue or None)`` for what the user chose as the base: a bundled encoder's
    name (:data:`BUNDLED_BASES`), an adapter folder (training continues from its weights, on its own base), or a SAM
    checkpoint (a local folder or a Hub id). Bases are read, never written."""
    base = (base or DEFAULT_BASE).strip()
    if base in BUNDLED_BASES:
        return str(bundled_base(base, workspace)), None
    path = Path(base).expanduser()
    if _is_adapter_folder(path):
        recorded = read_adapter_config(str(path)).base_model_name_or_path
        if not recorded:
            raise AdapterFolderError(f"{path}: the adapter names no base model; it cannot be continued here", path)
        return str(recorded), str(path)
    if path.exists() and not path.is_dir():
        raise LoSamValueError(f"{base}: the base must be a folder (a SAM checkpoint or an adapter), not a file")
    return base, None


# -- training ------------------------------------------------------------------------------------------------------------
def _checkpoint_step(output_dir: Path) -> int:
    meta = output_dir / CHECKPOINT_DIR / CHECKPOINT_META
    try:
        return int(json.loads(meta.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _watch_training(model, on_step, should_stop, first_step: int):
    """Hooks on the base model: ``on_step(step, loss)`` after each training forward, and a stop (as Ctrl-C does,
    so the loop keeps the checkpoint of the last finished step) before the next one once ``should_stop()``."""
    counter = itertools.count(first_step + 1)

    def before(module, args, kwargs):
        if module.training and should_stop is not None and should_stop():
            raise KeyboardInterrupt("stopped from the app")

    def after(module, args, kwargs, output):
        loss = getattr(output, "loss", None)
        if module.training and loss is not None and on_step is not None:
            on_step(next(counter), float(loss.detach()))

    return [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]


def train_from_painted_mask(
    image,
    mask: np.ndarray,
    id2label: Mapping | Sequence[str],
    output_dir: str | os.PathLike,
    *,
    workspace: Workspace,
    base: str | None = DEFAULT_BASE,
    preset: str = "default",
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    learning_rate: float | None = None,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    modality: str | None = None,
    task: str | None = None,
) -> TrainingResult:
    """Train an adapter on one image and its painted class-id map with :func:`losam_peft.training.train`.

    ``image``: a file path or an array (decoded by the package's decoder). ``base``: see :func:`resolve_base`.
    ``on_step(step, loss)`` is called after every training step; once ``should_stop()`` is true the run stops before
    its next step and keeps the checkpoint of the last finished one (``result.interrupted``); ``resume=True``
    continues the run in ``output_dir`` from that checkpoint (same settings). Runs in the main thread of its process
    (the training loop handles SIGTERM there); the app runs it in a child process (:class:`TrainingJob`).
    """
    id2label = normalise_id2label(id2label)
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).stem
        image, _ = decode_array(image)
    else:
        name = "painted_shot"
        image, _ = decode_array(image)
    mask = np.asarray(mask)
    if mask.ndim != 2 or tuple(mask.shape) != tuple(image.shape[:2]):
        raise DataError(f"the mask is {mask.shape} but the image is {image.shape[1]}×{image.shape[0]} pixels")
    if not (mask[mask != 255] > 0).any():
        raise LoSamValueError("the mask is empty: paint at least one stroke of a class (or upload a mask) first")
    if preset not in PRESETS:
        raise LoSamValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    base_path, adapter = resolve_base(base, workspace)
    output_dir = Path(output_dir)
    resume_from = None
    if resume:
        if not (output_dir / CHECKPOINT_DIR / CHECKPOINT_META).is_file():
            raise TrainingError(f"{output_dir}: there is no checkpoint to resume from")
        resume_from = str(output_dir / CHECKPOINT_DIR)
    config = TrainingConfig(
        output_dir=str(output_dir),
        base=base_path,
        id2label=id2label,
        preset=preset,
        max_steps=int(steps),
        seed=int(seed),
        log_with="none",
        modality=modality,
        task=task,
        resume_from=resume_from,
        datasets=["painted in losam app"],
        **({"learning_rate": float(learning_rate)} if learning_rate else {}),
    )
    base_model = SamForSemanticSegmentation.from_pretrained(
        base_path, id2label=id2label, image_size=config.image_size, use_fast_path=config.fast_path
    )
    prepare = None
    if adapter is not None:
        recorded = normalise_id2label(read_adapter_config(adapter).id2label or {})
        if recorded and recorded != id2label:
            raise LoSamValueError(
                f"{adapter}: the adapter segments {', '.join(recorded.values())}; continue it with the same classes"
            )

        def prepare(model, _config):
            return load_adapter(model, adapter, is_trainable=True)

    hooks = _watch_training(base_model, on_step, should_stop, _checkpoint_step(output_dir) if resume else 0)
    try:
        return train(config, [Sample(image, mask, name)], base_model=base_model, progress=False, prepare_model=prepare)
    finally:
        for hook in hooks:
            hook.remove()


def _parent_gone() -> bool:
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def _train_worker(request: dict, events, stop) -> None:
    """The child process of a :class:`TrainingJob`: one training, its steps and its end as events. It also stops
    (keeping its checkpoint) when the app that started it is gone."""
    try:
        workspace = Workspace(request.pop("workspace"))
        result = train_from_painted_mask(
            request.pop("image"),
            request.pop("mask"),
            request.pop("id2label"),
            request.pop("output_dir"),
            workspace=workspace,
            on_step=lambda step, loss: events.put({"kind": "step", "step": step, "loss": loss}),
            should_stop=lambda: stop.is_set() or _parent_gone(),
            **request,
        )
        events.put(
            {
                "kind": "done",
                "steps": result.steps,
                "interrupted": result.interrupted,
                "seconds": round(result.seconds, 1),
                "output_dir": str(result.output_dir),
            }
        )
    except LoSamError as err:
        events.put({"kind": "error", "message": " ".join(str(err).split())})
    except BaseException as err:  # shown in the page as one line; the traceback goes to the server's log
        traceback.print_exc()
        events.put({"kind": "error", "message": f"{type(err).__name__}: {err}"})


@dataclass
class TrainingJob:
    """One training at a time, in a child process: :meth:`start`, then :meth:`poll` for its events (``step``: step and
    loss; ``done``: steps, interrupted, seconds, output_dir; ``error``: a one-line message), :meth:`cancel` to stop
    it (the checkpoint of the last finished step is kept)."""

    history: list = field(default_factory=list)
    outcome: dict | None = None
    output_dir: Path | None = None
    total_steps: int = 0

    def __post_init__(self):
        self._process = None
        self._events = None
        self._stop = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._process is not None and self.outcome is None

    def start(self, request: Mapping) -> None:
        """Start ``train_from_painted_mask(**request)`` (with ``workspace`` the working folder's path) in a child
        process; refused while another training of this job runs."""
        with self._lock:
            if self.running:
                raise TrainingError("a training is already running in this app; wait for it to finish or cancel it")
            context = multiprocessing.get_context("spawn")
            self._events, self._stop = context.Queue(), context.Event()
            request = dict(request)
            request["workspace"] = str(request["workspace"].root if isinstance(request["workspace"], Workspace)
                                       else request["workspace"])  # fmt: skip
            self.history, self.outcome = [], None
            self.output_dir = Path(request["output_dir"])
            self.total_steps = int(request.get("steps", DEFAULT_STEPS))
            self._process = context.Process(target=_train_worker, args=(request, self._events, self._stop), daemon=True)
            self._process.start()

    def poll(self, timeout: float = 0.5) -> list[dict]:
        """The events since the last call (waiting up to ``timeout`` seconds for the first)."""
        if self._events is None:
            return []
        found = []
        try:
            found.append(self._events.get(timeout=timeout))
            while True:
                found.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in found:
            if event["kind"] == "step":
                self.history.append((event["step"], event["loss"]))
            else:
                self.outcome = event
        if self.outcome is not None and self._process is not None:
            self._process.join(timeout=30)
            self._release()
        elif self.outcome is None and self._process is not None and not self._process.is_alive():
            self._process.join()
            found.extend(self._drain())  # the last events may arrive after the process ended
            if self.outcome is None:
                self.outcome = {
                    "kind": "error",
                    "message": f"the training process stopped unexpectedly (exit status {self._process.exitcode})",
                }
                found.append(self.outcome)
        return found

    def _release(self) -> None:
        """Free the queue and the stop flag of an ended job (their semaphores)."""
        if self._events is not None and (self._process is None or not self._process.is_alive()):
            self._events.close()
            self._events.join_thread()
            self._events = None

    def _drain(self) -> list[dict]:
        found = []
        try:
            while True:
                event = self._events.get(timeout=0.2)
                found.append(event)
                if event["kind"] == "step":
                    self.history.append((event["step"], event["loss"]))
                else:
                    self.outcome = event
        except (queue.Empty, OSError, ValueError):
            pass
        return found

    def cancel(self) -> bool:
        """Ask the running training to stop after its current step; False when none runs."""
        if not self.running or self._stop is None:
            return False
        self._stop.set()
        return True

    def wait(self, timeout: float = 600.0) -> dict | None:
        """Poll until the training ends (or ``timeout`` seconds pass); its outcome."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            self.poll(timeout=0.5)
        return self.outcome

    def close(self) -> None:
        """Stop the child process (at once) if it still runs."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)


# -- segmentation ----------------------------------------------------------------------------------------------------------
@dataclass
class SegmentationRun:
    """What :func:`segment_images` wrote: per image ``name``, ``image`` (an 8-bit PNG preview), ``overlay``, ``mask``
    (paths) and ``fractions`` (per class); the failures; the summary and the output folder."""

    output_dir: Path
    items: list[dict]
    failed: list[tuple[str, str]]
    summary: object

    def table(self, id2label: Mapping[int, str]) -> list[list]:
        """Rows ``[name, fraction of class 1, …]`` (percent, 2 decimals)."""
        names = [id2label[i] for i in range(1, len(id2label))]
        return [[item["name"]] + [round(100 * item["fractions"].get(n, 0.0), 2) for n in names] for item in self.items]


def check_server_path(text: str | None, root: str | os.PathLike | None, workspace: Workspace, what: str) -> str | None:
    """A base or adapter named in the page (read only): a Hub id, or a local path that, when ``root`` is set, lies
    inside ``root`` or the working folder."""
    text = (text or "").strip()
    if not text or text in BUNDLED_BASES or root is None:
        return text or None
    path = Path(text).expanduser()
    if not path.exists():
        return text  # a Hub id
    resolved = path.resolve()
    if not (resolved.is_relative_to(Path(root).expanduser().resolve()) or resolved.is_relative_to(workspace.root)):
        raise LoSamValueError(f"{text}: only {what}s inside {Path(root).expanduser().resolve()} may be named here")
    return text


def server_folder_images(folder: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The image files in a folder on the server (read only); with ``root``, the folder must lie inside it."""
    text = (folder or "").strip()
    if not text:
        raise LoSamValueError("name a folder on the server to segment")
    path = Path(text).expanduser().resolve()
    if root is not None and not path.is_relative_to(Path(root).expanduser().resolve()):
        raise LoSamValueError(f"{text}: only folders inside {Path(root).expanduser().resolve()} may be segmented here")
    if not path.is_dir():
        raise DataError(f"{text}: no such folder on the server", path)
    files, _, _ = scan_inputs([path])
    if not files:
        raise DataError(f"{text}: the folder holds no image files", path)
    return [file for file, _ in files]


def segment_images(
    pipeline: LoSamPipeline,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    tile: int | None = None,
    overlap: float = 0.25,
) -> SegmentationRun:
    """Segment files with :func:`losam_peft.predict.predict_paths` (``masks/``, ``overlays/``, ``summary.csv`` in
    ``output_dir``) and add an 8-bit preview of each image (``previews/``, for browsers that cannot show TIFF or
    16-bit files)."""
    if not inputs:
        raise LoSamValueError("upload at least one image (or name a folder on the server) to segment")
    output_dir = Path(output_dir)
    summary = predict_paths(pipeline, list(inputs), output_dir, overlay=True, tile=tile, overlap=overlap,
                            progress=False)  # fmt: skip
    items = []
    for row in summary.rows:
        if row.get("status") != "ok":
            continue
        name = row["name"]
        preview = output_dir / "previews" / f"{name}.png"
        atomic_save(preview, Image.fromarray(to_rgb8(row["file"])).save)
        mask_path = output_dir / MASKS_DIR / f"{name}.png"
        with Image.open(mask_path) as written:
            fractions = class_fractions(np.asarray(written), pipeline.id2label)
        items.append(
            {
                "name": name,
                "image": preview,
                "overlay": output_dir / OVERLAYS_DIR / f"{name}.png",
                "mask": mask_path,
                "fractions": fractions,
            }
        )
    return SegmentationRun(output_dir, items, list(summary.failed), summary)


# -- zips ------------------------------------------------------------------------------------------------------------------
def zip_folder(folder: str | os.PathLike, zip_path: str | os.PathLike, members: Sequence[str] | None = None) -> Path:
    """Write ``zip_path`` (atomically) with the files of ``folder`` (all of them, sub-folders included, or only the
    relative paths in ``members`` that exist), named relative to ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: nothing to zip, the folder does not exist", folder)
    if members is None:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = [folder / m for m in members if (folder / m).is_file()]

    def write(temp: str) -> None:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, file.relative_to(folder).as_posix())

    return atomic_save(zip_path, write)


def zip_results(run: SegmentationRun | str | os.PathLike, zip_path: str | os.PathLike | None = None) -> Path:
    """The masks (PNG), overlays and ``summary.csv`` of a segmentation in one zip (beside the folder by default)."""
    folder = Path(run.output_dir if isinstance(run, SegmentationRun) else run)
    members = [SUMMARY_NAME] + [
        p.relative_to(folder).as_posix()
        for sub in (MASKS_DIR, OVERLAYS_DIR)
        for p in sorted((folder / sub).rglob("*.png"))
    ]
    return zip_folder(folder, zip_path or folder.with_suffix(".zip"), members)


def zip_adapter(adapter_dir: str | os.PathLike, zip_path: str | os.PathLike, workspace: Workspace | None = None) -> Path:
    """The adapter folder in one zip: adapter config and weights, image processor, model card, metrics, training
    record and loss curve. An adapter trained on a bundled encoder (random weights, inside ``workspace``) also
    carries that encoder under ``base-encoder/``: load it with ``LoSamPipeline.from_pretrained(folder,
    base=folder + "/base-encoder")``."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS_NAME).is_file():
        raise AdapterFolderError(f"{adapter_dir}: no trained adapter there yet ({ADAPTER_WEIGHTS_NAME} is missing)")
    base = Path(str(read_adapter_config(str(adapter_dir)).base_model_name_or_path or ""))
    bundled = workspace is not None and base.is_dir() and base.resolve().is_relative_to(workspace.folder("bases"))
    files = [(adapter_dir / name, name) for name in ADAPTER_ZIP_FILES if (adapter_dir / name).is_file()]
    if bundled:
        files += [(base / name, f"{ZIP_BASE_DIR}/{name}") for name in _BASE_FILES if (base / name).is_file()]

    def write(temp: str) -> None:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for source, name in files:
                archive.write(source, name)

    return atomic_save(zip_path, write)


def load_adapter_zip(zip_path: str | os.PathLike, workspace: Workspace) -> tuple[Path, str | None]:
    """Unpack an adapter zip (as :func:`zip_adapter` writes it) into the working folder: ``(folder, base)``, ``base``
    the carried ``base-encoder/`` when the zip has one, else None. Only the known file names are taken from the
    zip; nothing is written outside ``workspace``."""
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise AdapterFolderError(f"{zip_path.name}: not a readable zip file ({err})", zip_path) from None
    wanted = {name: name for name in ADAPTER_ZIP_FILES}
    wanted.update({f"{ZIP_BASE_DIR}/{name}": f"{ZIP_BASE_DIR}/{name}" for name in _BASE_FILES})
    with archive:
        names = set(archive.namelist())
        prefix = _common_prefix(names)
        if f"{prefix}{ADAPTER_CONFIG_NAME}" not in names or f"{prefix}{ADAPTER_WEIGHTS_NAME}" not in names:
            raise AdapterFolderError(
                f"{zip_path.name}: not an adapter zip (it needs {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME})",
                zip_path,
            )
        folder = workspace.new_folder("adapters")
        for member, target in wanted.items():
            if f"{prefix}{member}" in names:
                data = archive.read(f"{prefix}{member}")
                path = folder / target
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(path, lambda temp, data=data: Path(temp).write_bytes(data))
    base = folder / ZIP_BASE_DIR
    return folder, (str(base) if (base / "config.json").is_file() else None)


def _common_prefix(names: set[str]) -> str:
    """``"name/"`` when every member of a zip lies in one top folder (a zipped folder), else ``""``."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops)) + "/"
    return ""


def load_pipeline(adapter: str, base: str | None = None) -> LoSamPipeline:
    """An adapter (folder or Hub id) on its base, for segmenting (read only)."""
    text = (adapter or "").strip()
    if not text:
        raise LoSamValueError("name an adapter (a folder on the server or a Hub id), upload its zip, or train one")
    return LoSamPipeline.from_pretrained(text, base=(base or None) and str(base).strip() or None)


# -- the Hub -----------------------------------------------------------------------------------------------------------------
def hub_status() -> tuple[bool, str]:
    """``(can push, a note for the page)``: pushing needs a token (``HF_TOKEN`` or ``hf auth login``) and must not be
    in offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return False, "Pushing to the Hub is off: offline mode is on (HF_HUB_OFFLINE=1). Download the zip instead."
    if not get_token():
        return False, (
            "Pushing to the Hub is off: no Hugging Face token here (set HF_TOKEN or run `hf auth login` before "
            "`losam app`). Download the zip instead."
        )
    return True, "A Hugging Face token is present: the adapter can be pushed (this needs a network connection)."


def push(adapter_dir: str | os.PathLike, repo_id: str, *, private: bool = False, base_repo_id: str | None = None) -> str:
    """Upload the adapter with :func:`losam_peft.hub.push_adapter`; the repository's URL."""
    allowed, note = hub_status()
    if not allowed:
        raise LoSamValueError(note)
    return push_adapter(adapter_dir, (repo_id or "").strip(), private=private, base_repo_id=(base_repo_id or None))
