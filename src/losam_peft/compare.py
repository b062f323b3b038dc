"""LoSAM against the usual ways of adapting SAM, trained on the same shots by the same training loop.

    losam compare --base SAM --train-image IMG --train-mask MASK --eval-dir DIR --output-dir OUT
    losam compare ... --methods losam,lora            # any subset

Four methods, each trained by :func:`losam_peft.training.train` with the same shots, seed, recipe and number of
steps, then reloaded from what it saved and evaluated by :func:`losam_peft.evaluation.evaluate_adapter`:

============  =====================================================================================================
``losam``     the paper's prompt layer before every encoder block + the segmentation head (a LoSAM PEFT adapter)
``head``      head-only tuning: SAM frozen, no prompt layers; only the segmentation head is trained and saved
``lora``      PEFT's own ``LoraConfig`` on the encoder attention's ``qkv`` projection (rank 8) + the head
``full``      full fine-tuning: every weight of the encoder and the head is trained and saved
============  =====================================================================================================

The result is one table with the mean foreground Dice, the trainable parameters, the size on disk of what each
method has to ship (its safetensors files) and the training time, printed as markdown and written to
``compare.json`` / ``compare.csv``. Every method's folder can be evaluated again with ``losam evaluate --adapter``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_json, write_staged
from .data.io import DataError
from .errors import LoSamValueError

__all__ = [
    "METHODS",
    "MethodOptions",
    "add_compare_arguments",
    "compare_command",
    "compare_methods",
    "format_compare_table",
    "load_method_model",
    "load_method_pipeline",
    "prepare_method",
    "save_function",
]

METHODS = ("losam", "head", "lora", "full")
METHOD_TITLES = {
    "losam": "LoSAM (prompt layers + head)",
    "head": "head only (frozen SAM)",
    "lora": "LoRA on attention qkv + head",
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
    lora_targets: list = field(default_factory=lambda: ["qkv"])


# -- preparing the model of each method ---------------------------------------------------------------------------------
def _check_method(method: str) -> str:
    if method not in METHODS:
        raise LoSamValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return method


def prepare_method(method: str, base_model, config, options: MethodOptions | None = None):
    """The model ``training.train`` optimises for ``method``: its parameters with ``requires_grad`` are trained.

    ``base_model`` is a fresh ``SamForSemanticSegmentation`` (modified in place); ``config`` the run's
    ``TrainingConfig``.
    """
    options = options or MethodOptions()
    _check_method(method)
    if not getattr(base_model, "name_or_path", None):
        base_model.name_or_path = config.base
    if method == "losam":
        from peft.mapping_func import get_peft_model

        from .tuner import LoSamConfig

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
    from peft import LoraConfig
    from peft.mapping_func import get_peft_model

    lora = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(options.lora_targets),
        modules_to_save=["segmentation_head"],
        bias="none",
    )
    model = get_peft_model(base_model, lora)
    model.peft_config["default"].base_model_name_or_path = config.base
    return model


def _method_record(method: str, model, config, options: MethodOptions) -> dict:
    record = {
        "method": method,
        "title": METHOD_TITLES[method],
        "base": config.base,
        "id2label": {str(k): v for k, v in (config.id2label or {}).items()},
        "image_size": config.image_size,
    }
    if method == "lora":
        record["lora"] = dataclasses.asdict(options)
    return record


def save_function(method: str, config, options: MethodOptions | None = None) -> Callable | None:
    """What ``training.train`` calls instead of ``save_adapter`` for ``method`` (``None`` for LoSAM)."""
    options = options or MethodOptions()
    _check_method(method)
    if method == "losam":
        return None

    def save(model, output_dir, *, image_processor=None, metrics=None, training=None, datasets=None, **_):
        output_dir = Path(output_dir)

        def write(folder: Path) -> None:
            if method == "head":
                from safetensors.torch import save_file

                state = {
                    HEAD_PREFIX + k: v.detach().cpu().contiguous()
                    for k, v in model.segmentation_head.state_dict().items()
                }
                save_file(state, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
                model.config.to_json_file(str(folder / "config.json"))
            elif method == "full":
                model.save_pretrained(str(folder), safe_serialization=True)
            else:
                model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
            if image_processor is not None:
                image_processor.save_pretrained(str(folder))
            record = _method_record(method, model, config, options)
            record.update(training=training or {}, datasets=list(datasets or []))
            (folder / METHOD_FILE).write_text(json.dumps(record, indent=2, default=str))

        write_staged(output_dir, write)
        return output_dir

    return save


# -- loading what each method saved -------------------------------------------------------------------------------------
def _read_method(folder: Path) -> dict:
    path = folder / METHOD_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {METHOD_FILE}; not a model folder written by losam compare", folder)
    return json.loads(path.read_text())


def load_method_model(folder: str | os.PathLike, base: str | None = None):
    """The trained model a ``losam compare`` method folder holds (``base`` overrides the recorded base)."""
    from .modeling_losam import SamForSemanticSegmentation

    folder = Path(folder)
    record = _read_method(folder)
    method = _check_method(record.get("method"))
    base = base or record.get("base")
    id2label = {int(k): v for k, v in (record.get("id2label") or {}).items()} or None
    image_size = record.get("image_size")
    if method == "full":
        return SamForSemanticSegmentation.from_pretrained(str(folder))
    if method == "losam":
        from .adapters import load_adapter, read_adapter_config

        adapter = read_adapter_config(str(folder))
        model = SamForSemanticSegmentation.from_pretrained(
            base, id2label=adapter.id2label, image_size=adapter.image_size
        )
        return load_adapter(model, str(folder))
    model = SamForSemanticSegmentation.from_pretrained(base, id2label=id2label, image_size=image_size)
    if method == "head":
        from safetensors.torch import load_file

        state = load_file(str(folder / HEAD_WEIGHTS))
        model.segmentation_head.load_state_dict({k[len(HEAD_PREFIX) :]: v for k, v in state.items()})
        return model.eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder)).eval()


def load_method_pipeline(folder: str | os.PathLike, base: str | None = None, device=None, dtype=None):
    """A ``LoSamPipeline`` around :func:`load_method_model` with the folder's image processor."""
    from .image_processing_losam import LoSamImageProcessor
    from .pipeline import LoSamPipeline

    folder = Path(folder)
    record = _read_method(folder)
    if record.get("method") == "losam":
        return LoSamPipeline.from_pretrained(str(folder), base=base, device=device, dtype=dtype)
    model = load_method_model(folder, base=base)
    if (folder / "preprocessor_config.json").is_file():
        processor = LoSamImageProcessor.from_pretrained(str(folder))
    else:
        processor = LoSamImageProcessor(image_size=model.config.image_size)
    id2label = {int(k): v for k, v in (record.get("id2label") or {}).items()} or None
    pipe = LoSamPipeline(model, processor, device=device, dtype=dtype, id2label=id2label)
    pipe.adapter = str(folder)
    pipe.base_model = base or record.get("base")
    return pipe


# -- training every method through training.train -----------------------------------------------------------------------
def train_method(method: str, config, train_samples, *, options: MethodOptions | None = None, progress: bool = True):
    """Train ``method`` with ``training.train`` on ``train_samples``; returns ``(TrainingResult, info)`` where
    ``info`` holds the trainable and total parameter counts."""
    from .training import train

    options = options or MethodOptions()
    info: dict[str, Any] = {}

    def prepare(base_model, run_config):
        model = prepare_method(method, base_model, run_config, options)
        info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # PEFT keeps the original head beside its trained copy (modules_to_save): count the model as it is used
        info["total_parameters"] = sum(
            p.numel() for name, p in model.named_parameters() if ".original_module." not in name
        )
        return model

    save = save_function(method, config, options)
    result = train(config, train_samples, None, progress=progress, prepare_model=prepare, save_model=save)
    if method == "losam":
        record = _method_record(method, None, config, options)
        atomic_write_json(Path(config.output_dir) / METHOD_FILE, record)
    return result, info


def _warm_up_imports() -> None:
    """Import what every training run imports once, so that the first method's time does not include it."""
    import accelerate  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def _weights_bytes(folder: Path) -> tuple[int, list[str]]:
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return sum(p.stat().st_size for p in files), [p.name for p in files]


def compare_methods(
    config,
    train_samples: Sequence,
    eval_samples,
    *,
    methods: Sequence[str] = METHODS,
    options: MethodOptions | None = None,
    id2label: Mapping | None = None,
    device=None,
    dtype=None,
    batch_size: int = 1,
    keep_checkpoints: bool = False,
    progress: bool = True,
) -> dict:
    """Train each of ``methods`` on the same ``train_samples`` with the same recipe, evaluate on ``eval_samples``.

    ``config`` is the ``TrainingConfig`` every method shares; method ``m`` is written to ``config.output_dir/m``.
    ``config.base`` must be a loadable SAM checkpoint (each method starts from a fresh copy of it). A method whose
    training fails (e.g. the loss diverges) is reported with its error and the others still run. Returns the
    comparison (also written to ``compare.json`` and ``compare.csv`` in ``config.output_dir``).
    """
    from .evaluation import atomic_write_csv, atomic_write_json, evaluate_adapter
    from .metrics import METRIC_NAMES
    from .training import TrainingError, mean_foreground_dice

    options = options or MethodOptions()
    methods = [_check_method(m) for m in methods]
    if not methods:
        raise LoSamValueError("no method to compare")
    if len(set(methods)) != len(methods):
        raise LoSamValueError(f"methods listed twice: {methods}")
    if not train_samples:
        raise DataError("the training set is empty")
    if eval_samples is None or len(eval_samples) == 0:
        raise DataError("the comparison needs evaluation data (the evaluation set is empty)")
    if getattr(config, "resume_from", None):
        raise LoSamValueError("losam compare trains every method from scratch; resume_from is not supported")
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _warm_up_imports()
    train_ids = [s.id for s in train_samples]
    if hasattr(eval_samples, "column_names") and "id" in eval_samples.column_names:
        eval_ids = [str(i) for i in eval_samples["id"]]
    else:
        eval_ids = [str(getattr(s, "id", "") or i) for i, s in enumerate(eval_samples)]
    rows = []
    for method in methods:
        run_config = dataclasses.replace(
            config,
            output_dir=str(root / method),
            train_ids=list(train_ids),
            eval_ids=list(eval_ids),
            eval_every=0,
            log_with="none" if config.log_with == "auto" else config.log_with,
        )
        row: dict[str, Any] = {"method": method, "title": METHOD_TITLES[method], "output_dir": run_config.output_dir}
        if progress:
            print(f"== {method}: {METHOD_TITLES[method]}", flush=True)
        try:
            result, info = train_method(method, run_config, train_samples, options=options, progress=progress)
        except (TrainingError, torch.OutOfMemoryError) as err:
            row.update(status="failed", error=f"{type(err).__name__}: {err}")
            rows.append(row)
            continue
        if not keep_checkpoints:
            shutil.rmtree(Path(run_config.output_dir) / "checkpoint", ignore_errors=True)
        size, files = _weights_bytes(Path(run_config.output_dir))
        pipe = load_method_pipeline(run_config.output_dir, device=device, dtype=dtype)
        metrics = evaluate_adapter(
            pipe,
            eval_samples,
            id2label,
            Path(run_config.output_dir) / "evaluation",
            batch_size=batch_size,
            num_overlays=0,
            plot=False,
            progress=False,
            dataset_name="the evaluation set",
        )
        dice = mean_foreground_dice(metrics)
        total = info.get("total_parameters") or 0
        row.update(
            status="ok",
            dice=dice,
            per_class={
                str(entry["name"]): {m: entry.get(m) for m in METRIC_NAMES}
                for key, entry in metrics["per_class"].items()
                if int(key) != 0
            },
            trainable_parameters=info.get("trainable_parameters"),
            total_parameters=total,
            trainable_percent=(100.0 * info["trainable_parameters"] / total) if total else None,
            file_bytes=size,
            files=files,
            train_seconds=round(result.seconds, 3),
            steps=result.steps,
        )
        rows.append(row)

    comparison = {
        "methods": rows,
        "train_ids": train_ids,
        "eval_ids": eval_ids,
        "base": config.base,
        "seed": config.seed,
        "steps": next((r["steps"] for r in rows if r.get("steps") is not None), None),
        "recipe": {k: getattr(config, k) for k in RECIPE_KEYS},
        "lora": dataclasses.asdict(options),
    }
    comparison["table"] = format_compare_table(comparison)
    atomic_write_json(root / "compare.json", comparison)
    columns = ["method", "title", "status", "dice", "trainable_parameters", "total_parameters", "trainable_percent",
               "file_bytes", "train_seconds", "steps", "output_dir", "error"]  # fmt: skip
    atomic_write_csv(root / "compare.csv", rows, columns)
    return comparison


# -- formatting ---------------------------------------------------------------------------------------------------------
def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_compare_table(comparison: Mapping[str, Any]) -> str:
    """Markdown: ``Method | Dice (%) | Trainable params | Adapter file | Training time``."""
    lines = [
        "| Method | Dice (%) | Trainable params | Adapter file | Training time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in comparison["methods"]:
        if row.get("status") != "ok":
            lines.append(f"| {row['title']} | failed: {row.get('error', '')} | - | - | - |")
            continue
        dice = "n/a" if row.get("dice") is None else f"{100 * row['dice']:.2f}"
        share = row.get("trainable_percent")
        params = f"{row['trainable_parameters']:,}" + (f" ({share:.2f}%)" if share is not None else "")
        lines.append(
            f"| {row['title']} | {dice} | {params} | {_size(row.get('file_bytes'))} | {row['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------------------------------
def _methods(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    aliases = {"head-only": "head", "head_only": "head", "full-ft": "full", "full_finetuning": "full"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--methods takes a comma-separated subset of {','.join(METHODS)}, got {text!r}"
        )
    return names


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``losam compare``: those of ``losam train`` plus the methods and the LoRA settings."""
    from .cli import add_training_arguments

    add_training_arguments(parser)
    group = parser.add_argument_group("comparison")
    group.add_argument("--methods", type=_methods, default=list(METHODS),
                       help=f"comma-separated subset of {','.join(METHODS)} (default: all)")  # fmt: skip
    group.add_argument("--lora-rank", type=int, default=8)
    group.add_argument("--lora-alpha", type=int, default=16)
    group.add_argument("--lora-targets", default="qkv", help="comma-separated module names for LoRA (default qkv)")
    group.add_argument("--device", default=None, help="evaluation device (default: best available)")
    group.add_argument("--dtype", default=None, help="evaluation autocast dtype: bf16, fp16 or fp32")
    group.add_argument("--eval-batch-size", type=int, default=1)
    group.add_argument("--keep-checkpoints", action="store_true", help="keep each method's resume checkpoint")


def _default_eval_samples(args, data) -> list | None:
    """Evaluation data when none was given: the dataset's test split, else the images not drawn as shots."""
    from .data.samples import samples_from_dataset
    from .data.sources import _from_folder, load_split

    if args.dataset:
        from .data import DATASETS

        spec = DATASETS.get(args.dataset)
        if spec is not None and "test" in spec.split_names and (args.split or "train") != "test":
            return samples_from_dataset(load_split(args.dataset, args.data_root, "test", skip_bad=args.skip_bad))
    if (args.dataset or args.train_dir) and args.shots is not None:
        dataset = (
            _from_folder(args.train_dir, skip_bad=args.skip_bad)
            if args.train_dir
            else load_split(args.dataset, args.data_root, args.split, skip_bad=args.skip_bad, default="train")
        )
        shots = {s.id for s in data.train}
        rest = [i for i, image_id in enumerate(dataset["id"]) if str(image_id) not in shots]
        if rest:
            return samples_from_dataset(dataset.select(rest))
    return None


def compare_command(args: argparse.Namespace) -> dict:
    """``losam compare``: train every method on the same shots, print one table, write compare.json/csv."""
    from .data.sources import load_training_data

    if getattr(args, "resume_from", None):
        raise DataError("losam compare trains every method from scratch; --resume-from is not supported")
    data = load_training_data(args)
    eval_samples = data.eval if data.eval is not None else _default_eval_samples(args, data)
    if not eval_samples:
        raise DataError(
            "losam compare needs evaluation data: --eval-dir, --eval-image/--eval-mask or --eval-dataset, or a "
            "--dataset with a test split, or --shots K so that the remaining images are used"
        )
    from .cli import training_config_from_args

    config = training_config_from_args(args, data)
    options = MethodOptions(
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
    )
    comparison = compare_methods(
        config,
        data.train,
        eval_samples,
        methods=args.methods,
        options=options,
        id2label=config.id2label,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.eval_batch_size,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.quiet,
    )
    shots = ", ".join(comparison["train_ids"][:8]) + (" …" if len(comparison["train_ids"]) > 8 else "")
    print(
        f"\n{len(comparison['train_ids'])} training image(s) ({shots}), {len(comparison['eval_ids'])} evaluation "
        f"images, {comparison['steps']} steps, seed {comparison['seed']}, base {comparison['base']}\n"
    )
    print(comparison["table"])
    print(f"written: {Path(args.output_dir) / 'compare.json'}, {Path(args.output_dir) / 'compare.csv'}")
    return comparison
