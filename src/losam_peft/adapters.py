"""Loading LoSAM adapters onto a base model: safetensors only, with clear errors before PEFT sees the files."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from .atomic import write_staged
from .constants import ADAPTER_CONFIG_NAME, ADAPTER_PICKLE_NAME, ADAPTER_WEIGHTS_NAME
from .errors import LoSamValueError
from .loading import CheckpointError, resolve_file
from .model_card import write_model_card
from .tuner import LOSAM_PEFT_TYPE, LoSamConfig


def read_adapter_config(adapter: str, **hub_kwargs):
    """The ``LoSamConfig`` of an adapter folder or Hub repository."""

    path = resolve_file(str(adapter), ADAPTER_CONFIG_NAME, **hub_kwargs)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the adapter configuration ({err})", path) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: the adapter configuration must be a JSON object, found a {type(data).__name__}", path
        )
    if data.get("peft_type") != LOSAM_PEFT_TYPE:
        raise CheckpointError(f"{path}: peft_type is {data.get('peft_type')!r}, not a LoSAM adapter ({LOSAM_PEFT_TYPE!r})")
    known = set(LoSamConfig.__dataclass_fields__)
    try:
        return LoSamConfig(**{k: v for k, v in data.items() if k in known and k != "peft_type"})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid LoSAM adapter configuration ({err})", path) from None


def check_adapter_files(adapter: str, **hub_kwargs) -> None:
    """Refuse an adapter without a readable ``adapter_model.safetensors`` (pickled ``.bin`` weights are never
    loaded); an empty, truncated or garbage file is a one-line ``CheckpointError`` naming it."""
    folder = Path(str(adapter)).expanduser()
    if folder.is_dir() and not (folder / ADAPTER_WEIGHTS_NAME).is_file():
        pickled = (folder / ADAPTER_PICKLE_NAME).exists()
        extra = f" (it has {ADAPTER_PICKLE_NAME}, which losam-peft does not unpickle)" if pickled else ""
        raise CheckpointError(f"{folder} has no {ADAPTER_WEIGHTS_NAME}{extra}", folder)
    path = resolve_file(str(adapter), ADAPTER_WEIGHTS_NAME, **hub_kwargs)
    problem = safetensors_problem(Path(path))
    if problem:
        raise CheckpointError(f"{path}: not a readable safetensors file ({problem})", path)
    return Path(path)


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes by name, from a safetensors file's header alone (check it with :func:`safetensors_problem`)."""
    with Path(path).open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def check_adapter_labels(config, weights: Path) -> None:
    """The labels in ``adapter_config.json`` must be the classes the head's weights predict."""
    classifier = [shape for name, shape in safetensors_shapes(weights).items()
                  if "segmentation_head" in name and name.endswith("classifier.weight")]  # fmt: skip
    labels = getattr(config, "id2label", None) or {}
    recorded = len(labels) if labels else getattr(config, "num_labels", None)
    if classifier and recorded and classifier[0][0] != int(recorded):
        names = ", ".join(str(v) for v in labels.values()) if labels else f"num_labels {recorded}"
        raise CheckpointError(
            f"{weights.parent / ADAPTER_CONFIG_NAME}: the configuration names {recorded} classes ({names}) but "
            f"{weights.name} holds a head for {classifier[0][0]}; the two files come from different adapters",
            weights,
        )


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, from its header alone (no tensor is read): empty, garbage, no tensors,
    or cut short (the header's last data offset lies past the end of the file)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "the file is empty" if size == 0 else "the file is too short to hold a header"
        length = int.from_bytes(head, "little")
        if length <= 0 or 8 + length > size:
            return "no valid header"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError):
            return "the header is not valid JSON"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]  # fmt: skip
    if not ends:
        return "it holds no tensors"
    if 8 + length + max(ends) > size:
        return f"the file is truncated: {size} bytes, the header announces {8 + length + max(ends)}"
    return None


@contextlib.contextmanager
def quiet_peft_deprecations():
    """PEFT 0.21 still asks transformers 5 for ``is_gradient_checkpointing``; that deprecation is not the user's to
    act on. Silenced around our own PEFT calls only (no global filter)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter(model, adapter: str, adapter_name: str = "default", is_trainable: bool = False, **hub_kwargs):
    """Put a saved LoSAM adapter on ``model``.

    ``model`` is a ``SamForSemanticSegmentation`` (returns a new ``PeftModel``) or a ``PeftModel`` that already holds
    adapters (adds ``adapter_name`` beside them, for switching with ``set_adapter``). The adapter's encoder size and
    labels are checked against the model before any weight is read.
    """
    from peft import PeftModel

    weights = check_adapter_files(adapter, **hub_kwargs)
    config = read_adapter_config(adapter, **hub_kwargs)
    check_adapter_labels(config, weights)
    config.inference_mode = not is_trainable
    if config.align_corners is None:  # saved before the field existed: those heads were trained with False
        config.align_corners = False
    if hasattr(getattr(model, "config", None), "align_corners"):
        model.config.align_corners = bool(config.align_corners)
    kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        if isinstance(model, PeftModel):
            with quiet_peft_deprecations():
                model.load_adapter(
                    str(adapter), adapter_name=adapter_name, is_trainable=is_trainable, peft_config=config, **kwargs
                )
            return model
        with quiet_peft_deprecations():
            return PeftModel.from_pretrained(
                model, str(adapter), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
            )
    except LoSamValueError as err:  # the tuner's check of the recorded encoder size and labels against the model
        raise CheckpointError(f"{adapter}: {err}", adapter) from None
    except RuntimeError as err:  # PEFT's own size-mismatch report, should anything get past the checks above
        if "size mismatch" not in str(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise CheckpointError(f"{weights}: the adapter's weights do not fit this model ({first})", weights) from None


def save_adapter(
    model,
    output_dir,
    *,
    image_processor=None,
    metrics: dict | None = None,
    training: dict | None = None,
    datasets: list[str] | None = None,
    adapter_name: str = "default",
    license: str | None = None,
) -> Path:
    """Write a LoSAM adapter with its image processor and model card into ``output_dir``.

    Everything is written into a staging folder beside ``output_dir`` first and then moved into place file by file
    with ``os.replace``, so an interruption never leaves a half-written adapter file behind.
    """

    def write(staging: Path) -> None:
        # save_embedding_layers=False: LoSAM has no embedding layers, and PEFT's "auto" would query the Hub
        model.save_pretrained(
            str(staging), selected_adapters=[adapter_name], safe_serialization=True, save_embedding_layers=False
        )
        inner = staging / adapter_name
        if adapter_name != "default" and inner.is_dir():  # PEFT nests non-default adapters in a subfolder
            for item in inner.iterdir():
                os.replace(item, staging / item.name)
            inner.rmdir()
        if image_processor is not None:
            image_processor.save_pretrained(str(staging))
        config = model.peft_config[adapter_name]
        write_model_card(
            staging,
            config,
            base_model=config.base_model_name_or_path,
            metrics=metrics,
            training=training,
            datasets=datasets,
            license=license,
        )

    return write_staged(output_dir, write)
