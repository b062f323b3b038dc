"""One-shot and few-shot training of a LoSAM adapter with Accelerate.

The paper's recipe is the default: SGD (momentum 0.9, Nesterov, weight decay 5e-4), poly learning rate
0.05 × (1 − step/max_steps)^0.9, cross-entropy, mixed precision, colour jitter and flips. ``preset="paper"``
reproduces the reference exactly (1024 plain resize, mean/std 0.5, 32 epochs of batch 1); the default preset keeps
the aspect ratio and uses SAM's own pixel normalisation.

Runs unchanged under ``accelerate launch`` (multi-process data parallel, AMP). Randomness is derived from
``seed`` and the step number alone — the order of samples in epoch ``e`` and the augmentation of each drawn sample —
so a resumed run continues exactly as the uninterrupted one would, and a seeded CPU run is repeatable.

Outputs in ``output_dir``: the adapter (``adapter_config.json``, ``adapter_model.safetensors``), its image
processor, a model card (``README.md``), ``metrics.json``, ``train_config.json``, ``history.json``,
``loss_curve.png``, ``checkpoint/`` (resume state) and ``logs/`` (trackers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_save, atomic_write_json
from .data.samples import Sample
from .errors import TrainingError

PRESETS = ("default", "paper")
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_WEIGHTS = "state.safetensors"
CHECKPOINT_META = "state.json"


@dataclass
class TrainingConfig:
    """Everything a run depends on; written to ``train_config.json``."""

    output_dir: str
    base: str = "facebook/sam-vit-base"
    id2label: dict | None = None
    preset: str = "default"
    image_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 0.05
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    mixed_precision: str = "no"
    augment: bool = True
    seed: int = 0
    reduction: int = 4
    eval_every: int = 0
    save_every: int = 0
    log_with: str = "auto"
    fast_path: bool = True
    modality: str | None = None
    task: str | None = None
    resume_from: str | None = None
    train_ids: list = field(default_factory=list)
    eval_ids: list = field(default_factory=list)
    datasets: list = field(default_factory=list)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise TrainingError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainingError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise TrainingError("batch_size and gradient_accumulation_steps must be at least 1")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in dict(self.id2label).items()}
        if self.preset == "paper":
            self.image_size = self.image_size or 1024
            self.epochs = self.epochs or 32
        if self.epochs is None and self.max_steps is None:
            self.epochs = 32

    def resume_key(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it."""
        keep = (
            "base", "id2label", "preset", "image_size", "epochs", "max_steps", "batch_size",
            "gradient_accumulation_steps", "learning_rate", "poly_power", "momentum", "weight_decay", "nesterov",
            "augment", "seed", "reduction", "train_ids",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keep}


@dataclass
class TrainingResult:
    output_dir: Path
    steps: int
    best_step: int | None
    metrics: dict | None
    history: list
    seconds: float
    interrupted: bool = False


# -- data ------------------------------------------------------------------------------------------------------------
class _PreparedSamples:
    """Samples preprocessed once into the model's geometry, kept as uint8 [0,1]-pixels and class ids."""

    def __init__(self, samples: Sequence[Sample], processor, num_labels: int):
        from .image_processing_losam import to_float_rgb

        self.pixels, self.labels = [], []
        check_label_values(samples, num_labels)
        for sample in samples:
            image = to_float_rgb(sample.image)
            height, width = image.shape[-2:]
            new_h, new_w = processor.resized_size(height, width)
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", antialias=True)[0]
            label = torch.from_numpy(sample.label.astype(np.int64))
            if sample.fov is not None:
                label = label.masked_fill(~torch.from_numpy(sample.fov), 255)
            self.pixels.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
            self.labels.append(processor.prepare_labels(label).to(torch.uint8))
        self.processor = processor

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, indices: Sequence[int], seeds: Sequence[int], augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_values, labels = [], []
        size = self.processor.image_size
        mean = torch.tensor(self.processor.image_mean)[:, None, None]
        std = torch.tensor(self.processor.image_std)[:, None, None]
        for index, seed in zip(indices, seeds):
            image = self.pixels[index].float() / 255
            label = self.labels[index].long()
            if augment:
                image, label = augment_pair(image, label, torch.Generator().manual_seed(int(seed)))
            image = (image - mean) / std
            pad_h, pad_w = size - image.shape[1], size - image.shape[2]
            image = F.pad(image, (0, pad_w, 0, pad_h))
            pixel_values.append(image)
            labels.append(label)
        return torch.stack(pixel_values), torch.stack(labels)


def check_label_values(samples: Sequence[Sample], num_labels: int) -> None:
    """Every mask value must be a class id below ``num_labels`` or 255 (ignore)."""
    for sample in samples:
        values = np.unique(sample.label)
        bad = [int(v) for v in values if v != 255 and not 0 <= v < num_labels]
        if bad:
            raise TrainingError(
                f"sample {sample.id!r}: mask values {bad[:5]} are outside the label set 0..{num_labels - 1} "
                "(255 = ignore); pass --labels/--num-labels that cover them"
            )


def augment_pair(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
    """Colour jitter (brightness, contrast, saturation ±20%) and horizontal/vertical flips of the image content.

    The label's padding (255) is cropped with the content so that flips act on the image, not on the pad."""
    height, width = image.shape[-2:]
    content = label[:height, :width]
    rand = torch.rand(5, generator=generator)
    brightness, contrast, saturation = 0.8 + 0.4 * rand[:3]
    image = image * brightness
    gray = image.mean(dim=0, keepdim=True)
    image = (image - gray.mean()) * contrast + gray.mean()
    gray = image.mean(dim=0, keepdim=True)
    image = ((image - gray) * saturation + gray).clamp(0, 1)
    if rand[3] < 0.5:
        image, content = image.flip(-1), content.flip(-1)
    if rand[4] < 0.5:
        image, content = image.flip(-2), content.flip(-2)
    label = label.clone()
    label[:height, :width] = content
    return image, label


def sample_stream(num_samples: int, seed: int, start: int, count: int) -> tuple[list[int], list[int]]:
    """Positions ``start .. start+count`` of the endless sample order: epoch ``e`` is a permutation seeded by
    ``(seed, e)``. Returns the sample indices and a per-draw augmentation seed."""
    indices, seeds = [], []
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_samples)
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        indices.append(int(order[offset]))
        seeds.append(seed * 7_919 + position * 104_729 + 1)
    return indices, seeds


def poly_lr(step: int, max_steps: int, base_lr: float, power: float) -> float:
    return base_lr * (1 - min(step, max_steps) / max_steps) ** power


# -- training --------------------------------------------------------------------------------------------------------
def train(
    config: TrainingConfig,
    train_samples: Sequence[Sample],
    eval_samples: Sequence[Sample] | None = None,
    *,
    base_model=None,
    progress: bool = True,
    prepare_model=None,
    save_model=None,
) -> TrainingResult:
    """Train a LoSAM adapter on ``train_samples`` and write it to ``config.output_dir``.

    ``base_model`` may be an in-memory ``SamForSemanticSegmentation`` (used as is; ``config.base`` is then only
    recorded); otherwise the base is loaded from ``config.base`` with the training labels.

    ``prepare_model(base_model, config) -> model`` trains something other than a LoSAM adapter with the same loop
    (``losam_peft.compare``: head-only, LoRA, full fine-tuning); the parameters of ``model`` with ``requires_grad``
    are optimised. ``save_model(model, output_dir, *, image_processor, metrics, training, datasets)`` then writes it
    instead of ``adapters.save_adapter``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import get_peft_model

    from .image_processing_losam import LoSamImageProcessor
    from .metrics import SegmentationMetricAccumulator
    from .modeling_losam import SamForSemanticSegmentation
    from .tuner import LoSamConfig

    started = time.perf_counter()
    if not train_samples:
        raise TrainingError("the training set is empty")
    output_dir = Path(config.output_dir)
    id2label = config.id2label or _labels_from_model(base_model) or {0: "background", 1: "foreground"}
    config.id2label = id2label
    num_labels = len(id2label)
    if not config.train_ids:
        config.train_ids = [s.id for s in train_samples]
    if eval_samples and not config.eval_ids:
        config.eval_ids = [s.id for s in eval_samples]

    check_label_values(list(train_samples) + list(eval_samples or []), num_labels)
    checkpoint = _read_checkpoint(Path(config.resume_from), config) if config.resume_from else None

    log_with = _resolve_trackers(config.log_with)
    _forget_previous_accelerator()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_dir=str(output_dir / "logs") if log_with else None,
    )
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if config.mixed_precision == "fp16" and accelerator.scaler is None and main:
        warnings.warn(
            f"Accelerate runs fp16 on {accelerator.device.type} without autocast or loss scaling; "
            "use --mixed-precision bf16 on CPUs",
            stacklevel=2,
        )
    set_seed(config.seed)

    if base_model is None:
        base_model = SamForSemanticSegmentation.from_pretrained(
            config.base, id2label=id2label, image_size=config.image_size, use_fast_path=config.fast_path
        )
    elif base_model.config.num_labels != num_labels:
        raise TrainingError(f"the base model has {base_model.config.num_labels} labels, the data {num_labels}")
    elif not getattr(base_model, "name_or_path", None):
        base_model.name_or_path = config.base
    base_model.set_fast_path(config.fast_path)
    image_size = base_model.config.image_size
    config.image_size = image_size
    processor = LoSamImageProcessor(image_size=image_size, mode="paper" if config.preset == "paper" else "sam")
    data = _PreparedSamples(train_samples, processor, num_labels)

    torch.manual_seed(config.seed)
    if prepare_model is not None:
        model = prepare_model(base_model, config)
    else:
        losam_config = LoSamConfig(
            reduction=config.reduction, modality=config.modality, task=config.task, base_model_name_or_path=config.base
        )
        model = get_peft_model(base_model, losam_config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    world = accelerator.num_processes
    per_step = config.batch_size * world * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(data) / per_step)
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_lr(step, max_steps, 1.0, config.poly_power)
    )
    start_step, best, history = 0, None, []
    if checkpoint is not None:
        start_step, best, history = _restore_checkpoint(checkpoint, model, optimizer)
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(start_step, max_steps, config.learning_rate, config.poly_power)
        scheduler.last_epoch = start_step
    model, optimizer = accelerator.prepare(model, optimizer)

    if main:
        atomic_write_json(output_dir / "train_config.json", _config_record(config, max_steps, world, image_size))
    if log_with:
        accelerator.init_trackers("losam", config={k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))})

    state = {"step": start_step, "best": best, "history": history, "interrupted": False, "save_model": save_model}
    evaluate_now = _make_evaluator(accelerator, model, processor, eval_samples, id2label, SegmentationMetricAccumulator)
    save_every = config.save_every or max(1, config.eval_every or max_steps // 4 or 1)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)

    def save_checkpoint():
        if main:
            _write_checkpoint(output_dir / CHECKPOINT_DIR, accelerator.unwrap_model(model), optimizer, config, state)
        accelerator.wait_for_everyone()

    previous_handler = _install_sigterm_handler()
    try:
        model.train()
        for step in range(start_step, max_steps):
            lr = optimizer.param_groups[0]["lr"]
            loss_value = _train_step(accelerator, model, optimizer, data, config, step, world, per_step)
            if loss_value is None:  # fp16: the loss scaler skipped this update and lowered its scale
                loss_value = float("nan")
            scheduler.step()
            state["step"] = step + 1
            record = {"step": step + 1, "loss": loss_value, "lr": lr}
            if config.eval_every and eval_samples and ((step + 1) % config.eval_every == 0) and step + 1 < max_steps:
                record.update(_evaluate_and_keep_best(evaluate_now, state, model, accelerator, processor, config, output_dir, id2label))
            state["history"].append(record)
            if log_with:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step + 1)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}")
                bar.update(1)
            if (step + 1) % save_every == 0 and step + 1 < max_steps:
                save_checkpoint()
    except NonFiniteLoss as err:
        if bar is not None:
            bar.close()
        raise TrainingError(
            f"{err}; training stopped and the last good checkpoint is kept in {output_dir / CHECKPOINT_DIR} "
            "(lower --learning-rate, or try --mixed-precision fp16 with loss scaling / no)"
        ) from None
    except KeyboardInterrupt:
        state["interrupted"] = True
        save_checkpoint()
        if bar is not None:
            bar.close()
        if main:
            print(
                f"interrupted after step {state['step']}; resume with --resume-from {output_dir / CHECKPOINT_DIR}",
                flush=True,
            )
        return TrainingResult(output_dir, state["step"], None, None, state["history"], time.perf_counter() - started, True)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if bar is not None:
        bar.close()

    final_metrics = None
    if eval_samples:
        final = _evaluate_and_keep_best(evaluate_now, state, model, accelerator, processor, config, output_dir, id2label)
        state["history"][-1].update(final) if state["history"] else state["history"].append(final)
        final_metrics = state["best_metrics"]
    else:
        _save_best(accelerator, model, processor, config, output_dir, None, state, max_steps)
    replicas = _replica_fingerprints(accelerator, accelerator.unwrap_model(model))
    if main:
        history_path = output_dir / "history.json"
        atomic_write_json(history_path, state["history"])
        _plot_loss_curve(state["history"], output_dir / "loss_curve.png")
        seconds = time.perf_counter() - started
        record = _config_record(config, max_steps, world, image_size)
        record["seconds"] = round(seconds, 2)
        record["replica_fingerprints"] = replicas
        record["replicas_identical"] = len(set(replicas)) == 1
        atomic_write_json(output_dir / "train_config.json", record)
    save_checkpoint()
    if log_with:
        accelerator.end_training()
    return TrainingResult(
        output_dir, state["step"], state.get("best_step"), final_metrics, state["history"], time.perf_counter() - started
    )


def _train_step(accelerator, model, optimizer, data, config, step, world, per_step) -> float | None:
    """One optimizer update; returns the mean loss, or None when fp16 loss scaling skipped a non-finite update.

    A non-finite loss in bf16/fp32 raises before the update, so the weights stay those of the last good step."""
    rank = accelerator.process_index
    total = torch.zeros((), device=accelerator.device)
    for micro in range(config.gradient_accumulation_steps):
        start = step * per_step + micro * config.batch_size * world + rank * config.batch_size
        indices, seeds = sample_stream(len(data), config.seed, start, config.batch_size)
        pixel_values, labels = data.batch(indices, seeds, config.augment)
        pixel_values, labels = pixel_values.to(accelerator.device), labels.to(accelerator.device)
        last = micro == config.gradient_accumulation_steps - 1
        context = accelerator.no_sync(model) if (world > 1 and not last) else _null_context()
        with context, accelerator.autocast():
            loss = model(pixel_values=pixel_values, labels=labels).loss / config.gradient_accumulation_steps
        accelerator.backward(loss)
        total += loss.detach().float()
    mean_loss = float(accelerator.reduce(total, reduction="mean"))
    loss_scaling = accelerator.scaler is not None
    if not math.isfinite(mean_loss) and not loss_scaling:
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(step + 1, mean_loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if loss_scaling and accelerator.optimizer_step_was_skipped:
        return None
    return mean_loss


class NonFiniteLoss(TrainingError):
    def __init__(self, step: int, value: float, what: str = "the loss"):
        super().__init__(f"{what} became {value} at step {step}")
        self.step, self.value = step, value


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _make_evaluator(accelerator, model, processor, eval_samples, id2label, accumulator_cls):
    if not eval_samples:
        return None
    prepared = [(processor(s.image)["pixel_values"], s) for s in eval_samples]

    def evaluate_now():
        net = accelerator.unwrap_model(model)
        was_training = net.training
        net.eval()
        accumulator = accumulator_cls(num_labels=len(id2label))
        with torch.no_grad(), accelerator.autocast():
            for pixel_values, sample in prepared:
                logits = net(pixel_values=pixel_values.to(accelerator.device)).logits
                label_map = processor.post_process_semantic_segmentation(logits, target_sizes=[sample.label.shape])[0]
                fov = torch.from_numpy(sample.fov) if sample.fov is not None else None
                accumulator.update(label_map.cpu(), torch.from_numpy(sample.label.astype(np.int64)), fov=fov)
        net.train(was_training)
        return accumulator.compute(id2label=id2label)

    return evaluate_now


def _evaluate_and_keep_best(evaluate_now, state, model, accelerator, processor, config, output_dir, id2label):
    metrics = None
    if accelerator.is_main_process:
        metrics = evaluate_now()
    metrics = _broadcast_object(accelerator, metrics)
    dice = mean_foreground_dice(metrics)
    record = {"eval_dice": dice}
    if state["best"] is None or (dice is not None and dice > state["best"]):
        state["best"], state["best_step"], state["best_metrics"] = dice, state["step"], metrics
        _save_best(accelerator, model, processor, config, output_dir, metrics, state, state["step"])
    return record


def mean_foreground_dice(metrics: dict | None) -> float | None:
    if not metrics:
        return None
    summary = (metrics.get("mean_foreground") or {}).get("dataset") or {}
    if summary.get("dice") is not None:
        return float(summary["dice"])
    values = [c.get("dice") for key, c in metrics.get("per_class", {}).items() if int(key) != 0]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _save_best(accelerator, model, processor, config, output_dir, metrics, state, step):
    if accelerator.is_main_process:
        from .adapters import save_adapter

        save = state.get("save_model") or save_adapter
        training = {
            "shots": list(config.train_ids),
            "steps": step,
            "epochs": config.epochs,
            "preset": config.preset,
            "image_size": config.image_size,
            "device": str(accelerator.device),
            "processes": accelerator.num_processes,
            "mixed_precision": config.mixed_precision,
        }
        save(
            accelerator.unwrap_model(model),
            output_dir,
            image_processor=processor,
            metrics=metrics,
            training=training,
            datasets=list(config.datasets) or None,
        )
        record = {"step": step, "train_ids": list(config.train_ids), "eval_ids": list(config.eval_ids)}
        if metrics is not None:
            record.update(metrics)
        atomic_write_json(output_dir / "metrics.json", record)
    accelerator.wait_for_everyone()


def _replica_fingerprints(accelerator, model) -> list[str]:
    """sha256 of every process's trainable weights: data-parallel replicas must end identical."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    if accelerator.num_processes == 1:
        return [digest.hexdigest()]
    from accelerate.utils import gather_object

    return list(gather_object([digest.hexdigest()]))


def _broadcast_object(accelerator, obj):
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    holder = [obj]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def _labels_from_model(model) -> dict | None:
    if model is None:
        return None
    return {int(k): str(v) for k, v in model.config.id2label.items()}


def _forget_previous_accelerator() -> None:
    """Accelerate keeps one global state per process; a second run in the same process (``losam compare``, tests,
    notebooks) with other settings must start from a fresh one. The process group itself is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _resolve_trackers(log_with: str):
    if log_with in (None, "", "none"):
        return None
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return log_with


def _config_record(config: TrainingConfig, max_steps: int, world: int, image_size: int) -> dict:
    record = asdict(config)
    record.update(max_steps=max_steps, processes=world, image_size=image_size, torch=torch.__version__)
    return record


def _install_sigterm_handler():
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return signal.getsignal(signal.SIGTERM)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def _trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable weights plus the buffers of trained modules (the head's BatchNorm statistics)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if name in trainable or "modules_to_save" in name or "losam_prompt" in name
    }


def _write_checkpoint(path: Path, model, optimizer, config: TrainingConfig, state: dict) -> None:
    """Atomically replace ``path`` with the current state; a state with non-finite weights is never written."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in _trainable_state(model).items()}
    broken = [k for k, v in tensors.items() if v.dtype.is_floating_point and not torch.isfinite(v).all()]
    if broken:
        raise NonFiniteLoss(state["step"], float("nan"), what=f"weight {broken[0][len('model.'):]}")
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    for name, param in zip(names, params):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{name}"] = buffer.detach().cpu().contiguous()
    meta = {
        "step": state["step"],
        "best": state.get("best"),
        "best_step": state.get("best_step"),
        "history": state["history"],
        "config": config.resume_key(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=path.parent))
    try:
        save_file(tensors, staging / CHECKPOINT_WEIGHTS)
        (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=1))
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(staging, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _read_checkpoint(path: Path, config: TrainingConfig) -> dict:
    if path.is_dir() and not (path / CHECKPOINT_META).is_file() and (path / CHECKPOINT_DIR).is_dir():
        path = path / CHECKPOINT_DIR
    if not (path / CHECKPOINT_META).is_file() or not (path / CHECKPOINT_WEIGHTS).is_file():
        old = path.with_name(path.name + ".old")
        if (old / CHECKPOINT_META).is_file():
            path = old
        else:
            raise TrainingError(f"{path}: no training checkpoint there ({CHECKPOINT_META} and {CHECKPOINT_WEIGHTS})")
    meta = json.loads((path / CHECKPOINT_META).read_text())
    saved, current = meta.get("config", {}), json.loads(json.dumps(config.resume_key()))
    # settings left unspecified (None, or no recorded training ids) take the checkpoint's values
    differing = sorted(k for k in current if current[k] not in (None, []) and saved.get(k) != current[k])
    if differing:
        raise TrainingError(
            f"{path}: the checkpoint was made with other settings ({', '.join(differing)}); resume with the same "
            "command line, or start a new run"
        )
    return {"path": path, "meta": meta}


def _restore_checkpoint(checkpoint: dict, model, optimizer):
    from safetensors.torch import load_file

    tensors = load_file(checkpoint["path"] / CHECKPOINT_WEIGHTS)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    result = model.load_state_dict(model_state, strict=False)
    if result.unexpected_keys:
        raise TrainingError(f"{checkpoint['path']}: checkpoint does not fit this model ({result.unexpected_keys[:3]})")
    for name, param in model.named_parameters():
        buffer = tensors.get(f"momentum.{name}")
        if buffer is not None:
            optimizer.state[param]["momentum_buffer"] = buffer.to(param.device).clone()
    meta = checkpoint["meta"]
    return int(meta["step"]), meta.get("best"), list(meta.get("history", []))


def _plot_loss_curve(history: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history if "loss" in r]
    losses = [r["loss"] for r in history if "loss" in r]
    if not steps:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, label="training loss")
    evals = [(r["step"], r["eval_dice"]) for r in history if r.get("eval_dice") is not None]
    if evals:
        twin = axis.twinx()
        twin.plot(*zip(*evals), "o-", color="tab:orange", label="validation Dice")
        twin.set_ylabel("validation Dice")
        twin.set_ylim(0, 1)
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy")
    axis.set_title("LoSAM training")
    figure.tight_layout()
    atomic_save(path, figure.savefig)
    plt.close(figure)
