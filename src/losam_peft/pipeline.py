"""``LoSamPipeline``: a saved LoSAM adapter in, label maps at each image's original size out.

Three lines load an adapter and segment an image::

    from losam_peft import LoSamPipeline
    pipe = LoSamPipeline.from_pretrained("path/to/adapter")   # a folder written by save_pretrained, or a Hub id
    result = pipe("fundus.png")                                # result.label_map: (H, W) class ids

``from_pretrained`` reads the adapter's ``adapter_config.json``, loads the base SAM encoder it names (or ``base=``),
puts the adapter on it and picks the adapter's image processor. Hub adapters are fetched with
``huggingface_hub.snapshot_download`` (``revision=`` pins a branch, tag or commit); offline (``HF_HUB_OFFLINE=1``)
they are read from the local cache, and the error says what to download when they are not there.

An in-memory model (a ``PeftModel`` during training or a plain ``SamForSemanticSegmentation``) is wrapped with
``LoSamPipeline(model, image_processor)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .adapters import check_adapter_files, load_adapter, read_adapter_config
from .bases import load_base_model
from .errors import LoSamValueError
from .fast_path import default_autocast_dtype
from .image_processing_losam import LoSamImageProcessor, class_map, decode_array, decode_image, to_rgb8
from .labels import normalise_id2label
from .loading import CheckpointError
from .tiling import tiled_probabilities
from .visualization import label_map_to_pil, overlay, palette

__all__ = [
    "LoSamPipeline",
    "SegmentationResult",
    "label_map_to_pil",  # re-exported from losam_peft.visualization
    "overlay",  # re-exported from losam_peft.visualization (takes 8-bit RGB; the method decodes first)
    "palette",  # re-exported from losam_peft.visualization
    "read_image",
    "resolve_adapter_folder",
    "to_rgb8",  # re-exported from losam_peft.image_processing_losam
]

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "preprocessor_config.json")
PREPROCESSOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "none": torch.float32,
}


def read_image(path: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """Decode an image file for prediction: ``(pixels, note)``, a (3, H, W) float tensor in [0, 1] and what was
    converted (CMYK, 16-bit, palette, alpha…) or "". The image processor's decoder
    (:func:`losam_peft.image_processing_losam.decode_image`); unreadable, truncated and non-image files raise
    :class:`losam_peft.errors.DataError` naming the file."""
    return decode_image(Path(path))


@dataclass
class SegmentationResult:
    """The prediction for one image.

    Attributes:
        label_map: ``(H, W)`` uint8 class ids at the image's original size.
        id2label: class names by id (0 is background).
        probabilities: ``(num_labels, H, W)`` float32 class probabilities, when asked for.
        note: what was converted while reading the image (e.g. "CMYK converted to RGB"), or "".
    """

    label_map: np.ndarray
    id2label: dict[int, str]
    probabilities: np.ndarray | None = None
    note: str = ""
    tiles: int = 1
    source: str | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return tuple(self.label_map.shape[:2])

    def foreground_fractions(self) -> dict[str, float]:
        """Fraction of the image's pixels predicted as each non-background class, by class name."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self.id2label))
        total = max(1, self.label_map.size)
        return {self.id2label.get(i, str(i)): float(counts[i]) / total for i in range(1, len(counts))}

    def to_pil(self) -> Image.Image:
        """The label map as a palette image (pixel value = class id), ready for ``.save("mask.png")``."""
        return label_map_to_pil(self.label_map, len(self.id2label))


class LoSamPipeline:
    """Segment images with a LoSAM model: ``pipe(images) -> SegmentationResult | list[SegmentationResult]``.

    Args:
        model: a ``PeftModel`` holding a LoSAM adapter, or a ``SamForSemanticSegmentation``.
        image_processor: the ``LoSamImageProcessor`` the model was trained with (default: SAM geometry at the
            model's ``image_size``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: where ``model`` already is; for
            ``from_pretrained``, CUDA when available, else CPU).
        dtype: autocast dtype for the forward pass: ``"bf16"``, ``"fp16"``, ``"fp32"`` or a ``torch.dtype``. The
            default is bf16 autocast where the device runs it fast (``losam_peft.fast_path.default_autocast_dtype``)
            and float32 elsewhere. Weights stay in float32; probabilities are returned in float32.
        id2label: class names; default from the model's config.
    """

    def __init__(
        self, model, image_processor: LoSamImageProcessor | None = None, device=None, dtype=None, id2label=None
    ):
        if device is None:  # an in-memory model stays where it is (e.g. on the GPU it is trained on)
            device = _model_device(model)
        self.device = _resolve_device(device)
        self.model = model.to(self.device)
        config = getattr(model, "config", None)
        if image_processor is None:
            size = getattr(config, "image_size", None)
            if size is None:
                raise LoSamValueError("pass image_processor=...: the model's config has no image_size")
            image_processor = LoSamImageProcessor(image_size=size)
        self.image_processor = image_processor
        if id2label is None:
            id2label = getattr(config, "id2label", None) or {0: "background", 1: "foreground"}
        self.id2label = normalise_id2label(id2label)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.adapter = None
        self.adapter_config = None
        self.base_model = None

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        adapter: str | os.PathLike,
        base: str | os.PathLike | None = None,
        device=None,
        dtype=None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        base_revision: str | None = None,
    ) -> LoSamPipeline:
        """Load an adapter (local folder or Hub id) onto its base SAM encoder.

        Args:
            adapter: a folder written by ``save_pretrained``/``save_adapter``, or a Hub repository id.
            base: the base SAM checkpoint to use instead of the one named in ``adapter_config.json``
                (``base_model_name_or_path``), e.g. a local copy of a SAM checkpoint.
            revision: branch, tag or commit of the adapter's Hub repository.
            base_revision: revision of the base model (default: the one PEFT recorded in the adapter config, if
                ``base`` is not given).
            token, cache_dir, local_files_only: passed to ``huggingface_hub``.
        """
        folder = resolve_adapter_folder(
            adapter, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
        )
        check_adapter_files(str(folder))
        config = read_adapter_config(str(folder))
        if not (folder / CARD_NAME).is_file():
            warnings.warn(
                f"{adapter}: the adapter has no model card ({CARD_NAME}); it loads, but its intended use, training "
                "data and limits are undocumented. Write one with losam_peft.model_card.write_model_card.",
                UserWarning,
                stacklevel=2,
            )
        base_name = base if base is not None else config.base_model_name_or_path
        if not base_name:
            raise CheckpointError(
                f"{adapter}: adapter_config.json names no base model (base_model_name_or_path is empty); pass "
                "base=... (a SAM checkpoint: a local folder or a Hub id) to say which encoder it was trained on"
            )
        base_name = str(base_name)
        if base_revision is None and base is None:
            base_revision = getattr(config, "revision", None)
        hub = dict(revision=base_revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
        id2label = config.id2label
        try:
            _check_base_cached(base_name, **hub)
            model = load_base_model(
                base_name,
                num_labels=None if id2label else config.num_labels,
                id2label=id2label,
                image_size=config.image_size,
                **hub,
            )
        except CheckpointError as err:
            origin = "given as base=" if base is not None else "named in the adapter's adapter_config.json"
            raise CheckpointError(
                f"cannot load the base model {base_name!r} ({origin}): {err}. Pass base=... (a local SAM "
                "checkpoint folder or a Hub id; `--base` on the command line) to load the adapter onto another copy "
                "of the same encoder"
            ) from None
        model = load_adapter(model, str(folder))
        processor = load_image_processor(folder, config.image_size or model.config.image_size)
        pipe = cls(model.eval(), processor, device=_resolve_device(device), dtype=dtype, id2label=id2label)
        pipe.adapter = str(adapter)
        pipe.adapter_config = config
        pipe.base_model = base_name
        return pipe

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def image_size(self) -> int:
        return int(self.image_processor.image_size)

    def __repr__(self) -> str:
        dtype = "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")
        return (
            f"LoSamPipeline(adapter={self.adapter!r}, base={self.base_model!r}, labels={self.id2label}, "
            f"image_size={self.image_size}, device={self.device}, dtype={dtype})"
        )

    # -- inference -----------------------------------------------------------------------------------------------
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def compile(self, **options) -> LoSamPipeline:
        """Run the forward through ``torch.compile(model, **options)`` from now on (slow first calls, faster after;
        most worth it on a GPU). Returns the pipeline."""
        self._compiled = torch.compile(self.model, **options)
        return self

    @torch.inference_mode()
    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Model logits (float32, on CPU) for prepared ``pixel_values``."""
        was_training = self.model.training
        self.model.eval()  # BatchNorm in the head must use its running statistics
        forward = getattr(self, "_compiled", None) or self.model
        try:
            with self.autocast():
                output = forward(pixel_values=pixel_values.to(self.device))
        finally:
            if was_training:
                self.model.train()
        logits = output.logits if hasattr(output, "logits") else output
        return logits.float().cpu()

    def probabilities(self, images: Sequence, batch_size: int = 1) -> list[torch.Tensor]:
        """Whole-image class probabilities ``(num_labels, H, W)`` per image (float32, original size)."""
        batch_size = _check_batch_size(batch_size)
        results: list[torch.Tensor] = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            inputs = self.image_processor.preprocess(chunk)
            logits = self.forward_logits(inputs["pixel_values"])
            sizes = inputs["original_sizes"].tolist()
            results.extend(self.image_processor.post_process_probabilities(logits, target_sizes=sizes))
        return results

    def forward_probabilities(self, images: Sequence) -> list[torch.Tensor]:
        """Class probabilities ``(num_labels, H, W)`` of each image in one forward pass (the callable that
        :func:`losam_peft.tiling.tiled_probabilities` runs on its windows)."""
        return self.probabilities(images, batch_size=max(1, len(images)))

    def __call__(
        self,
        images,
        batch_size: int = 1,
        return_probabilities: bool = False,
        tile: int | None = None,
        overlap: float = 0.25,
    ):
        """Segment one image or a list of images.

        ``images``: a PIL image, numpy array (H×W or H×W×C, 8/16-bit or float), torch tensor (C×H×W), file path, or
        a list of them (a 4-D array or tensor is a batch). Returns one :class:`SegmentationResult` for one input and
        a list for a list. With ``tile``, each image is segmented by overlapping ``tile``×``tile`` windows at native
        resolution whose probabilities are blended (see :mod:`losam_peft.tiling`); by default the whole image is
        resized to the model's input.
        """
        stacked = (isinstance(images, np.ndarray) and images.ndim == 4) or (
            isinstance(images, torch.Tensor) and images.dim() == 4
        )
        single = not isinstance(images, (list, tuple)) and not stacked
        items = [images] if single else list(images)
        if not items:
            return []
        loaded, notes, sources = [], [], []
        for item in items:
            # the decoder's compact result (uint8 for 8-bit sources) decodes again to exactly the same pixels
            image, note = decode_array(item)
            loaded.append(image)
            notes.append(note)
            sources.append(str(item) if isinstance(item, (str, os.PathLike)) else None)
        results = self.predict_loaded(
            loaded, batch_size=batch_size, return_probabilities=return_probabilities, tile=tile, overlap=overlap
        )
        for result, note, source in zip(results, notes, sources):
            result.note, result.source = note, source
        return results[0] if single else results

    def predict_loaded(
        self, images: Sequence, batch_size: int = 1, return_probabilities: bool = False, tile=None, overlap=0.25
    ) -> list[SegmentationResult]:
        """Segment already loaded images (PIL, numpy, tensors); the building block of ``__call__`` and predict."""
        if tile is not None:
            probs, tiles = [], []
            for image in images:
                p, n = tiled_probabilities(
                    self.forward_probabilities, image, tile=tile, overlap=overlap, batch_size=batch_size
                )
                probs.append(p)
                tiles.append(n)
        else:
            probs = self.probabilities(images, batch_size=batch_size)
            tiles = [1] * len(probs)
        return [self._result(p, n, return_probabilities) for p, n in zip(probs, tiles)]

    def _result(self, probs: torch.Tensor, tiles: int, return_probabilities: bool) -> SegmentationResult:
        label_map = class_map(probs).numpy()
        return SegmentationResult(
            label_map=label_map,
            id2label=dict(self.id2label),
            probabilities=probs.numpy() if return_probabilities else None,
            tiles=tiles,
        )

    def overlay(self, image, label_map, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """``image`` (anything the pipeline accepts: it is decoded first) with the predicted classes drawn over it
        (class colours as in the saved mask PNGs), and a legend naming them when ``legend``."""
        if isinstance(label_map, SegmentationResult):
            label_map = label_map.label_map
        return overlay(to_rgb8(image), label_map, alpha=alpha, num_labels=self.num_labels,
                       legend=self.id2label if legend else None)  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------------------------------
def load_image_processor(folder: str | os.PathLike, image_size: int) -> LoSamImageProcessor:
    """The image processor saved in ``folder`` (``preprocessor_config.json``), or SAM's geometry at ``image_size``
    when there is none; a damaged file is a ``CheckpointError`` naming it."""
    path = Path(folder) / PREPROCESSOR_NAME
    if not path.is_file():
        return LoSamImageProcessor(image_size=image_size)
    try:
        return LoSamImageProcessor.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as err:
        raise CheckpointError(f"{path}: not a usable image processor configuration ({err})", path) from None


def resolve_adapter_folder(
    adapter: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder of an adapter: the folder itself, or its Hub snapshot (downloaded or from the cache)."""
    folder = Path(adapter).expanduser()
    if folder.is_dir():
        if revision is not None:
            logger.info("%s is a local folder; revision=%r is ignored", folder, revision)
        return folder
    if folder.exists():
        raise CheckpointError(f"{adapter} is a file; expected an adapter folder written by save_pretrained or a Hub id")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(adapter)
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=list(ADAPTER_FILES),
        )
    except RevisionNotFoundError:
        raise CheckpointError(f"the Hub repository {repo_id} has no revision {revision!r}") from None
    except GatedRepoError:
        raise CheckpointError(
            f"the Hub repository {repo_id} is gated: accept its conditions on the Hub and log in (`hf auth login`)"
        ) from None
    except (RepositoryNotFoundError, HFValidationError):
        raise CheckpointError(
            f"{repo_id!r} is neither a local adapter folder nor a Hub repository you can access (check the path or "
            "spelling; log in with `hf auth login` for a private repository)"
        ) from None
    except LocalEntryNotFoundError:
        rev = f" --revision {revision}" if revision else ""
        rev_py = f", revision={revision!r}" if revision else ""
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1 or no network"
        cache = cache_dir or constants.HF_HUB_CACHE
        raise CheckpointError(
            f"the adapter {repo_id}{' at revision ' + revision if revision else ''} is not in the local Hugging Face "
            f"cache ({cache}) and the Hub cannot be reached ({why}). Download it once while online with "
            f"`hf download {repo_id}{rev}` (or huggingface_hub.snapshot_download({repo_id!r}{rev_py})), and its "
            "base SAM checkpoint (base_model_name_or_path in its adapter_config.json) the same way; or pass a local "
            "adapter folder and base=LOCAL_SAM_FOLDER"
        ) from None
    except Exception as err:  # IncompleteSnapshotError and connection errors
        raise CheckpointError(f"cannot fetch the adapter {repo_id}: {type(err).__name__}: {err}") from None
    return Path(path)


def _check_base_cached(base: str, revision=None, token=None, cache_dir=None, local_files_only=False) -> None:
    """Offline with a base model that is not cached: say so plainly (before the weights are looked for)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if Path(base).expanduser().exists():
        return
    try:
        hf_hub_download(base, "config.json", revision=revision, token=token, cache_dir=cache_dir,
                        local_files_only=local_files_only)  # fmt: skip
    except LocalEntryNotFoundError:
        rev = f" --revision {revision}" if revision else ""
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1 or no network"
        raise CheckpointError(
            f"it is not in the local Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and the Hub cannot "
            f"be reached ({why}); download it once while online with `hf download {base}{rev}`"
        ) from None
    except Exception:  # other problems are reported by the loader itself, with its own messages
        return


def _model_device(model) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return None


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise LoSamValueError(f"device={device!r} is not a device name such as cpu, cuda or cuda:1 ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoSamValueError(f"device={device} was asked for, but CUDA is not available here; use device='cpu'")
    return device


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for plain float32."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        chosen = default_autocast_dtype(device)
        return None if chosen in (None, torch.float32) else chosen
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in _DTYPE_NAMES:
            raise LoSamValueError(f"dtype must be one of bf16, fp16, fp32 (or auto), got {dtype!r}")
        dtype = _DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise LoSamValueError(f"dtype must be a floating-point torch.dtype or its name, got {dtype!r}")
    return None if dtype == torch.float32 else dtype


def _check_batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LoSamValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
