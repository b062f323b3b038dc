"""Models that ``losam compare`` trains besides LoSAM, saved and loaded again: head-only, LoRA and full fine-tuning.

Each method's folder holds ``method.json`` (which method, base, labels, recipe) and its weights as safetensors:
``head_model.safetensors`` (head only), a PEFT LoRA adapter, or a whole ``SamForSemanticSegmentation``. LoSAM
folders are ordinary adapters (plus ``method.json``). :func:`load_method_pipeline` turns any of them into a
``LoSamPipeline``, so evaluation treats every method alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from .adapters import load_adapter, read_adapter_config
from .atomic import write_staged
from .bases import load_base_model
from .constants import CONFIG_NAME
from .errors import CheckpointError, DataError, LoSamValueError
from .pipeline import LoSamPipeline, load_image_processor
from .tuner import LoSamConfig

__all__ = [
    "HEAD_WEIGHTS",
    "METHODS",
    "METHOD_FILE",
    "METHOD_TITLES",
    "MethodOptions",
    "check_method",
    "is_method_folder",
    "load_method_model",
    "load_method_pipeline",
    "method_record",
    "prepare_method",
    "read_method",
    "save_function",
]

METHODS = ("losam", "head", "lora", "full")
METHOD_TITLES = {
    "losam": "LoSAM (prompt layers + head)",
    "head": "head only (frozen SAM)",
    "lora": "LoRA on the attention projections + head",
    "full": "full fine-tuning",
}
METHOD_FILE = "method.json"
HEAD_WEIGHTS = "head_model.safetensors"
HEAD_PREFIX = "segmentation_head."
RECIPE_KEYS = (
    "preset", "image_size", "epochs", "max_steps", "batch_size", "learning_rate", "momentum", "weight_decay",
    "nesterov", "mixed_precision", "augment", "seed", "reduction",
)  # fmt: skip


@dataclass
class MethodOptions:
    """Settings of the baselines (LoSAM's own come from the ``TrainingConfig``)."""

    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    #: module names LoRA adapts; None: the base's attention projections (:func:`default_lora_targets`)
    lora_targets: list | None = None


def default_lora_targets(model) -> list[str]:
    """The attention projections of ``model``'s encoder: SAM's fused ``qkv``, or DINOv2's and ViT's query and value
    projections."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "qkv" in names:
        return ["qkv"]
    for pair in (["q_proj", "v_proj"], ["query", "value"]):  # transformers 5's names, and earlier releases'
        if set(pair) <= names:
            return pair
    raise LoSamValueError(
        f"{type(model).__name__} has no qkv, q_proj/v_proj or query/value projections for LoRA; name the modules "
        "with lora_targets"
    )


# -- preparing the model of each method ---------------------------------------------------------------------------------
def check_method(method: str) -> str:
    if method not in METHODS:
        raise LoSamValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return method


def prepare_method(method: str, base_model, config, options: MethodOptions | None = None):
    """The model ``training.train`` optimises for ``method``: its parameters with ``requires_grad`` are trained.

    ``base_model`` is a fresh ``SamForSemanticSegmentation`` (modified in place); ``config`` the run's
    ``TrainingConfig``.
    """
    options = options or MethodOptions()
    check_method(method)
    if not getattr(base_model, "name_or_path", None):
        base_model.name_or_path = config.base
    if method == "losam":
        model = get_peft_model(
            base_model,
            LoSamConfig(
                reduction=config.reduction,
                modality=config.modality,
                task=config.task,
                base_model_name_or_path=config.base,
            ),
        )
        model.peft_config["default"].base_model_name_or_path = config.base
        return model
    if method == "head":
        base_model.requires_grad_(False)
        base_model.segmentation_head.requires_grad_(True)
        return base_model
    if method == "full":
        base_model.requires_grad_(True)
        return base_model
    lora = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(options.lora_targets or default_lora_targets(base_model)),
        modules_to_save=["segmentation_head"],
        bias="none",
    )
    model = get_peft_model(base_model, lora)
    model.peft_config["default"].base_model_name_or_path = config.base
    return model


def method_record(method: str, model, config, options: MethodOptions) -> dict:
    record = {
        "method": method,
        "title": METHOD_TITLES[method],
        "base": config.base,
        "id2label": {str(k): v for k, v in (config.id2label or {}).items()},
        "image_size": config.image_size,
    }
    if method == "lora":
        record["lora"] = dataclasses.asdict(options)
        targets = getattr(getattr(model, "peft_config", {}).get("default"), "target_modules", None)
        if targets:  # the modules adapted, also when the base's default was used
            record["lora"]["lora_targets"] = sorted(targets)
    return record


def save_function(method: str, config, options: MethodOptions | None = None) -> Callable | None:
    """What ``training.train`` calls instead of ``save_adapter`` for ``method`` (``None`` for LoSAM)."""
    options = options or MethodOptions()
    check_method(method)
    if method == "losam":
        return None

    def save(model, output_dir, *, image_processor=None, metrics=None, training=None, datasets=None, **_):
        output_dir = Path(output_dir)

        def write(folder: Path) -> None:
            if method == "head":
                state = {
                    HEAD_PREFIX + k: v.detach().cpu().contiguous()
                    for k, v in model.segmentation_head.state_dict().items()
                }
                save_file(state, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
                model.config.to_json_file(str(folder / CONFIG_NAME))
            elif method == "full":
                model.save_pretrained(str(folder), safe_serialization=True)
            else:
                model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
            if image_processor is not None:
                image_processor.save_pretrained(str(folder))
            record = method_record(method, model, config, options)
            record.update(training=training or {}, datasets=list(datasets or []))
            (folder / METHOD_FILE).write_text(json.dumps(record, indent=2, default=str))

        write_staged(output_dir, write)
        return output_dir

    return save


# -- loading what each method saved -------------------------------------------------------------------------------------
def read_method(folder: Path) -> dict:
    path = folder / METHOD_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {METHOD_FILE}; not a model folder written by losam compare", folder)
    return json.loads(path.read_text())


def load_method_model(folder: str | os.PathLike, base: str | None = None):
    """The trained model a ``losam compare`` method folder holds (``base`` overrides the recorded base)."""
    folder = Path(folder)
    record = read_method(folder)
    method = check_method(record.get("method"))
    base = base or record.get("base")
    id2label = {int(k): v for k, v in (record.get("id2label") or {}).items()} or None
    image_size = record.get("image_size")
    if method == "full":
        return load_base_model(str(folder))
    if method == "losam":
        adapter = read_adapter_config(str(folder))
        model = load_base_model(
            base, id2label=adapter.id2label, image_size=adapter.image_size
        )
        return load_adapter(model, str(folder))
    model = load_base_model(base, id2label=id2label, image_size=image_size)
    if method == "head":
        state = load_file(str(folder / HEAD_WEIGHTS))
        model.segmentation_head.load_state_dict({k[len(HEAD_PREFIX) :]: v for k, v in state.items()})
        return model.eval()
    return PeftModel.from_pretrained(model, str(folder)).eval()


def load_method_pipeline(folder: str | os.PathLike, base: str | None = None, device=None, dtype=None):
    """A ``LoSamPipeline`` around :func:`load_method_model` with the folder's image processor."""
    folder = Path(folder)
    record = read_method(folder)
    if record.get("method") == "losam":
        return LoSamPipeline.from_pretrained(str(folder), base=base, device=device, dtype=dtype)
    model = load_method_model(folder, base=base)
    processor = load_image_processor(folder, model.config.image_size)
    id2label = {int(k): v for k, v in (record.get("id2label") or {}).items()} or None
    pipe = LoSamPipeline(model, processor, device=device, dtype=dtype, id2label=id2label)
    pipe.adapter = str(folder)
    pipe.base_model = base or record.get("base")
    return pipe


def is_method_folder(folder: str | os.PathLike) -> bool:
    """True for a folder written by ``losam compare`` for a method other than LoSAM."""
    path = Path(str(folder)).expanduser() / METHOD_FILE
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable method record ({err})", path) from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: not a method record (expected a JSON object)", path)
    return record.get("method") not in (None, "losam")
