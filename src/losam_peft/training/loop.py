"""The training loop: :func:`train` and its optimizer step."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env, set_seed
from peft import get_peft_model

from ..adapters import quiet_peft_deprecations, save_adapter
from ..atomic import atomic_save, atomic_write_json, check_output_dir, output_lock
from ..bases import load_base_model
from ..data.samples import Sample
from ..errors import TrainingError
from ..evaluation import evaluate_adapter
from ..image_processing_losam import LoSamImageProcessor
from ..labels import normalise_id2label
from ..metrics import mean_foreground_dice
from ..pipeline import LoSamPipeline
from ..tuner import LoSamConfig
from .checkpoint import CHECKPOINT_DIR, read_checkpoint, restore_checkpoint, write_checkpoint
from .config import NonFiniteLoss, TrainingConfig, TrainingResult
from .samples import PreparedSamples, check_label_values, sample_stream

__all__ = ["poly_lr", "train"]

#: how the evaluations during training name their data in messages
EVALUATION_SET = "the evaluation set"


def poly_lr(step: int, max_steps: int, base_lr: float, power: float) -> float:
    """The poly schedule: ``base_lr × (1 − step/max_steps)^power``."""
    return base_lr * (1 - min(step, max_steps) / max_steps) ** power


def train(
    config: TrainingConfig,
    train_samples: Sequence[Sample],
    eval_samples: Sequence[Sample] | None = None,
    *,
    val_samples: Sequence[Sample] | None = None,
    val_source: str | None = None,
    base_model=None,
    progress: bool = True,
    prepare_model=None,
    save_model=None,
) -> TrainingResult:
    """Train a LoSAM adapter on ``train_samples`` and write it to ``config.output_dir``.

    ``base_model`` may be an in-memory ``SamForSemanticSegmentation`` (used as is; ``config.base`` is then only
    recorded); otherwise the base is loaded from ``config.base`` with the training labels.

    The saved step is chosen on ``val_samples`` only: with them, the model is evaluated (by
    :func:`losam_peft.evaluation.evaluate_adapter`) every ``config.eval_every`` steps and at the end, and the step of
    the best validation mean foreground Dice is written; without them, the final step is written. ``eval_samples``
    are monitoring (at the same moments) and the final report of the written step; they never choose it.
    ``metrics.json`` and the card say how the step was chosen.

    ``prepare_model(base_model, config) -> model`` trains something other than a LoSAM adapter with the same loop
    (``losam_peft.compare``: head-only, LoRA, full fine-tuning); the parameters of ``model`` with ``requires_grad``
    are optimised. ``save_model(model, output_dir, *, image_processor, metrics, training, datasets)`` then writes it
    instead of ``adapters.save_adapter``.
    """
    started = time.perf_counter()
    if not train_samples:
        raise TrainingError("the training set is empty")
    # an adapter names its base; a local base is named by its absolute path, so the adapter loads from anywhere
    if config.base and Path(config.base).expanduser().exists():
        config.base = str(Path(config.base).expanduser().resolve())
    if base_model is not None and getattr(base_model, "name_or_path", None):
        if Path(base_model.name_or_path).expanduser().exists():
            base_model.name_or_path = str(Path(base_model.name_or_path).expanduser().resolve())
    output_dir = check_output_dir(config.output_dir)
    id2label = config.id2label or _labels_from_model(base_model) or {0: "background", 1: "foreground"}
    config.id2label = id2label
    num_labels = len(id2label)
    if not config.train_ids:
        config.train_ids = [s.id for s in train_samples]
    if eval_samples and not config.eval_ids:
        config.eval_ids = [s.id for s in eval_samples]
    if val_samples and not config.val_ids:
        config.val_ids = [s.id for s in val_samples]

    check_label_values(list(train_samples) + list(eval_samples or []) + list(val_samples or []), num_labels)
    check_training_folder(output_dir, overwrite=config.overwrite, resume_from=config.resume_from)
    checkpoint = read_checkpoint(Path(config.resume_from), config) if config.resume_from else None
    precision_note = _choose_precision(config)
    # one run at a time per output folder: a second one refuses (naming the first's pid) instead of mixing files
    lock = output_lock(output_dir, "training output folder") if _process_state().is_main_process else nullcontext()
    with lock:
        return _run(
            config, train_samples, eval_samples, val_samples, val_source, base_model, progress, prepare_model,
            save_model, output_dir, id2label, num_labels, checkpoint, precision_note, started,
        )  # fmt: skip


def _run(config, train_samples, eval_samples, val_samples, val_source, base_model, progress, prepare_model, save_model,
         output_dir, id2label, num_labels, checkpoint, precision_note, started) -> TrainingResult:  # fmt: skip
    """The body of :func:`train`, run while the output folder's lock is held."""

    log_with = _resolve_trackers(config.log_with)
    _forget_previous_accelerator()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_dir=str(output_dir / "logs") if log_with else None,
        dynamo_backend="inductor" if config.compile else None,
    )
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    config.mixed_precision = accelerator.mixed_precision  # what Accelerate decided (launcher, config, env) is recorded
    if precision_note and main:
        print(f"note: {precision_note}", flush=True)
    if config.mixed_precision == "fp16" and accelerator.scaler is None and main:
        warnings.warn(
            f"Accelerate runs fp16 on {accelerator.device.type} without autocast or loss scaling; "
            "use --mixed-precision bf16 on CPUs",
            stacklevel=2,
        )
    set_seed(config.seed)

    if base_model is None:
        base_model = load_base_model(
            config.base, id2label=id2label, image_size=config.image_size, use_fast_path=config.fast_path
        )
    elif base_model.config.num_labels != num_labels:
        raise TrainingError(f"the base model has {base_model.config.num_labels} labels, the data {num_labels}")
    elif not getattr(base_model, "name_or_path", None):
        base_model.name_or_path = config.base
    base_model.set_fast_path(config.fast_path)
    _check_reduction(config, base_model)
    if config.gradient_checkpointing:
        # transformers 5 renamed it; the old name still works there but warns
        enable = getattr(base_model, "activation_checkpointing_enable", None) or base_model.gradient_checkpointing_enable
        enable()
    image_size = base_model.config.image_size
    config.image_size = image_size
    processor = LoSamImageProcessor(image_size=image_size, mode=config.processor_mode)
    data = PreparedSamples(
        train_samples, processor, num_labels, ignore_outside_fov=config.ignore_outside_fov,
        device=accelerator.device, jitter=config.jitter,
    )  # fmt: skip

    torch.manual_seed(config.seed)
    if prepare_model is not None:
        model = prepare_model(base_model, config)
    else:
        losam_config = LoSamConfig(
            reduction=config.reduction, modality=config.modality, task=config.task, base_model_name_or_path=config.base
        )
        with quiet_peft_deprecations():
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
    state = {"step": 0, "best": None, "best_step": None, "history": [], "interrupted": False, "save_model": save_model,
             "changes": [], "record": partial(_config_record, config, max_steps, world, image_size)}  # fmt: skip
    if checkpoint is not None:
        state["step"], state["best"], state["best_step"], state["history"] = restore_checkpoint(
            checkpoint, model, optimizer
        )
        state["changes"] = list(checkpoint["meta"].get("changes", [])) + [
            dict(change, step=state["step"]) for change in checkpoint["changes"]
        ]
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(state["step"], max_steps, config.learning_rate, config.poly_power)
        scheduler.last_epoch = state["step"]
    start_step = state["step"]
    model, optimizer = accelerator.prepare(model, optimizer)

    if log_with:
        accelerator.init_trackers(
            "losam", config={k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))}
        )

    evaluate_now = _make_evaluator(accelerator, model, processor, eval_samples, id2label, EVALUATION_SET)
    validate_now = _make_evaluator(accelerator, model, processor, val_samples, id2label, "the validation set")
    state["selection"] = (
        {"by": "validation", "source": val_source or "validation data", "val_ids": list(config.val_ids)}
        if val_samples else {"by": "final step"}
    )  # fmt: skip
    measure = partial(_measure, evaluate_now, validate_now, state, model, accelerator, processor, config, output_dir)
    save_every = config.save_every or max(1, config.eval_every or max_steps // 4 or 1)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)

    def save_checkpoint():
        if main:
            write_checkpoint(output_dir / CHECKPOINT_DIR, accelerator.unwrap_model(model), optimizer, config, state)
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
            if config.eval_every and (eval_samples or val_samples) and (step + 1) % config.eval_every == 0:
                if step + 1 < max_steps:
                    record.update(measure(final=False))
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
        kept = output_dir / CHECKPOINT_DIR
        if (kept / "state.json").is_file():
            advice = (f"the last good checkpoint is kept in {kept}; go on from it with a lower learning rate: "
                      f"the same command with --resume-from {kept} --learning-rate {config.learning_rate / 2:g}")
        else:
            advice = (f"no checkpoint was written before it; start again with a lower learning rate "
                      f"(--learning-rate {config.learning_rate / 2:g}) or a more frequent --save-every")
        raise TrainingError(f"{err}; training stopped and {advice}") from None
    except KeyboardInterrupt as interruption:
        state["interrupted"] = True
        signum = getattr(interruption, "signum", signal.SIGINT)
        save_checkpoint()
        if bar is not None:
            bar.close()
        if main:
            print(
                f"interrupted after step {state['step']}; resume with --resume-from {output_dir / CHECKPOINT_DIR}",
                flush=True,
            )
        return TrainingResult(
            output_dir, state["step"], None, None, state["history"], time.perf_counter() - started, True, int(signum)
        )
    finally:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            signal.signal(signal.SIGTERM, previous_handler)
    if bar is not None:
        bar.close()

    final = measure(final=True)
    state["history"][-1].update(final) if state["history"] else state["history"].append(final)
    # a resumed run whose best validation came before the interruption keeps that adapter and its metrics
    final_metrics = state.get("best_metrics") or (_written_metrics(output_dir) if val_samples else None)
    replicas = _replica_fingerprints(accelerator, accelerator.unwrap_model(model))
    if main:
        history_path = output_dir / "history.json"
        atomic_write_json(history_path, state["history"])
        _plot_loss_curve(state["history"], output_dir / "loss_curve.png")
        seconds = time.perf_counter() - started
        record = state["record"](changes=state["changes"])
        record["seconds"] = round(seconds, 2)
        record["replica_fingerprints"] = replicas
        record["replicas_identical"] = len(set(replicas)) == 1
        atomic_write_json(output_dir / "train_config.json", record)
    save_checkpoint()
    if log_with:
        accelerator.end_training()
    return TrainingResult(
        output_dir,
        state["step"],
        state.get("best_step"),
        final_metrics,
        state["history"],
        time.perf_counter() - started,
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
        context = accelerator.no_sync(model) if (world > 1 and not last) else nullcontext()
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


# -- evaluation ------------------------------------------------------------------------------------------------------
def _evaluation_dtype(accelerator) -> str:
    """The precision the training forward runs in (Accelerate autocasts only where it has native AMP)."""
    if not accelerator.native_amp:
        return "fp32"
    return {"fp16": "fp16", "bf16": "bf16"}.get(accelerator.mixed_precision, "fp32")


def _make_evaluator(accelerator, model, processor, eval_samples, id2label, name=None):
    """A function computing the metrics of the model as it is now, with the package's one evaluation
    (:func:`losam_peft.evaluation.evaluate_adapter`), or None without evaluation data."""
    if not eval_samples:
        return None
    pipe = LoSamPipeline(
        accelerator.unwrap_model(model),
        processor,
        device=accelerator.device,
        dtype=_evaluation_dtype(accelerator),
        id2label=id2label,
    )

    def evaluate_now() -> dict:
        results = evaluate_adapter(
            pipe, eval_samples, id2label, None, progress=False, num_overlays=0, plot=False,
            dataset_name=name or EVALUATION_SET,
        )  # fmt: skip
        results.pop("outputs", None)  # nothing is written
        return results

    return evaluate_now


def _measure(evaluate_now, validate_now, state, model, accelerator, processor, config, output_dir, *, final: bool):
    """Validation (chooses the saved step) and evaluation (monitoring, the report) of the model as it is now; the
    adapter is written when this step is the best on validation, or, without validation data, at the final step."""
    def run(function):
        metrics = function() if (function is not None and accelerator.is_main_process) else None
        return _broadcast_object(accelerator, metrics) if function is not None else None

    val_metrics, eval_metrics = run(validate_now), run(evaluate_now)
    record = {}
    if eval_metrics is not None:
        record["eval_dice"] = mean_foreground_dice(eval_metrics)
    if val_metrics is not None:
        dice = mean_foreground_dice(val_metrics)
        record["val_dice"] = dice
        better = state["best"] is None or (dice is not None and dice > state["best"])
    else:
        better = final
    if better:
        # the report: the evaluation data when there is some, else the validation data (the selection says which)
        source = eval_metrics if eval_metrics is not None else val_metrics
        report = dict(source) if source is not None else None
        state["best"] = record.get("val_dice")
        state["best_step"], state["best_metrics"] = state["step"], report
        validation = None
        if val_metrics is not None:
            validation = {"mean_foreground_dice": record["val_dice"], "mean_foreground": val_metrics.get("mean_foreground")}
        _save_best(accelerator, model, processor, config, output_dir, report, state, state["step"], validation)
    return record


def _written_metrics(output_dir: Path) -> dict | None:
    path = output_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _save_best(accelerator, model, processor, config, output_dir, metrics, state, step, validation=None):
    if accelerator.is_main_process:
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
            "selection": dict(state.get("selection") or {}, step=step),
        }
        save(
            accelerator.unwrap_model(model),
            output_dir,
            image_processor=processor,
            metrics=metrics,
            training=training,
            datasets=list(config.datasets) or None,
            license=config.license,
        )
        record = {
            "step": step,
            "selection": dict(state.get("selection") or {}, step=step),
            "train_ids": list(config.train_ids),
            "eval_ids": list(config.eval_ids),
            "val_ids": list(config.val_ids),
        }
        if validation is not None:
            record["validation"] = validation
        if metrics is not None:
            record.update(metrics)
        atomic_write_json(output_dir / "metrics.json", record)
        # written with the adapter, so that the folder always describes the adapter in it (a run that fails later
        # leaves the last written adapter and its settings together)
        atomic_write_json(output_dir / "train_config.json", state["record"](changes=state["changes"], saved_step=step))
    accelerator.wait_for_everyone()


# -- processes -------------------------------------------------------------------------------------------------------
def _replica_fingerprints(accelerator, model) -> list[str]:
    """sha256 of every process's trainable weights: data-parallel replicas must end identical."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    if accelerator.num_processes == 1:
        return [digest.hexdigest()]
    return list(gather_object([digest.hexdigest()]))


def _broadcast_object(accelerator, obj):
    if accelerator.num_processes == 1:
        return obj
    holder = [obj]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def _labels_from_model(model) -> dict | None:
    if model is None:
        return None
    return normalise_id2label(model.config.id2label)


def _forget_previous_accelerator() -> None:
    """Accelerate keeps one global state per process; a second run in the same process (``losam compare``, tests,
    notebooks) with other settings must start from a fresh one. The process group itself is kept."""
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
    from accelerate.utils import LoggerType

    known = [kind.value for kind in LoggerType]
    if log_with not in known:
        raise TrainingError(f"log_with={log_with!r} is not a tracker Accelerate knows; choose auto, none or one of "
                            f"{', '.join(known)}")  # fmt: skip
    return log_with


def _config_record(config: TrainingConfig, max_steps: int, world: int, image_size: int, *, changes=(),
                   saved_step=None) -> dict:  # fmt: skip
    record = asdict(config)
    record.pop("overwrite", None)  # how the folder was opened, not a setting of the adapter
    record.update(max_steps=max_steps, processes=world, image_size=image_size, torch=torch.__version__)
    if saved_step is not None:
        record["saved_step"] = saved_step
    if changes:
        record["resume_changes"] = list(changes)
    return record


#: files whose presence means an output folder already holds an adapter or a run
RUN_FILES = ("adapter_config.json", "train_config.json", CHECKPOINT_DIR)


def check_training_folder(output_dir, *, overwrite: bool = False, resume_from=None) -> None:
    """Refuse to train into a folder that holds another adapter or run, unless ``overwrite`` or the run resumes that
    folder's own checkpoint (``resume_from``)."""
    output_dir = Path(output_dir)
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if not found or overwrite:
        return
    if resume_from:
        resumed = Path(resume_from).expanduser().resolve()
        own = output_dir.resolve()
        if resumed in (own, own / CHECKPOINT_DIR, own / (CHECKPOINT_DIR + ".old")):
            return
    raise TrainingError(
        f"{output_dir} already holds an adapter or a training run ({', '.join(found)}); choose another output_dir, "
        f"replace it (overwrite, --overwrite), or continue it with resume_from {output_dir / CHECKPOINT_DIR}"
    )


def _choose_precision(config: TrainingConfig) -> str | None:
    """The paper preset's fp16 needs CUDA (autocast with a loss scaler); elsewhere it runs bf16. Returns a note when
    the precision was changed. A precision given explicitly is used as given."""
    from_preset = config.preset == "paper" and "mixed_precision" not in getattr(config, "_given", ())
    if not (from_preset and config.mixed_precision == "fp16"):
        return None
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher not in ("", "no"):  # accelerate launch --mixed_precision / accelerate config chose one: it wins
        config.mixed_precision = None
        return f"the launcher's mixed precision ({launcher}) is used instead of the paper preset's fp16"
    device = _process_state().device
    if device.type == "cuda":
        return None
    config.mixed_precision = "bf16"
    return (f"the paper preset's fp16 autocast with loss scaling needs a CUDA device; on {device.type} it runs bf16 "
            "(give --mixed-precision to choose)")  # fmt: skip


def _process_state() -> PartialState:
    """Accelerate's process state, created as its Accelerator would (``ACCELERATE_USE_CPU`` from the launcher's
    ``--cpu`` is read by the Accelerator's state only; a PartialState made first without it would be single-process)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _check_reduction(config: TrainingConfig, base_model) -> None:
    hidden = getattr(base_model.config, "hidden_size", None)
    if hidden and config.reduction and hidden % config.reduction:
        raise TrainingError(
            f"reduction {config.reduction} does not divide the encoder's hidden size {hidden} (choose a divisor, "
            f"e.g. {', '.join(str(d) for d in range(1, min(hidden, 16) + 1) if hidden % d == 0)})"
        )


def _install_sigterm_handler():
    def handler(signum, frame):
        interruption = KeyboardInterrupt(f"signal {signum}")
        interruption.signum = signum
        raise interruption

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return signal.getsignal(signal.SIGTERM)


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
    curves = [(key, label, colour) for key, label, colour in (
        ("val_dice", "validation Dice (chooses the step)", "tab:green"),
        ("eval_dice", "evaluation Dice (monitoring only)", "tab:orange"),
    ) if any(r.get(key) is not None for r in history)]  # fmt: skip
    if curves:
        twin = axis.twinx()
        for key, label, colour in curves:
            points = [(r["step"], r[key]) for r in history if r.get(key) is not None]
            twin.plot(*zip(*points), "o-", color=colour, label=label)
        twin.set_ylabel("mean foreground Dice")
        twin.set_ylim(0, 1)
        twin.legend(loc="lower right", fontsize=7)
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy")
    axis.set_title("LoSAM training")
    figure.tight_layout()
    atomic_save(path, figure.savefig)
    plt.close(figure)
