"""``losam train`` and ``losam compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..baselines import METHODS, MethodOptions
from ..compare import compare_methods, parse_methods
from ..data import DATASETS
from ..data.samples import samples_from_dataset
from ..data.sources import load_dataset_split, load_folder, load_training_data
from ..errors import DataError, LoSamError
from ..metrics import format_paper_table
from ..training import train
from ..training.loop import check_training_folder
from .common import add_training_options, data_options, num_labels_of, training_config


def add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="train a LoSAM adapter")
    add_training_options(parser)
    parser.set_defaults(func=run_train)


def run_training(args: argparse.Namespace):
    """Load the data the options name and train; the ``TrainingResult``."""
    # refused before the data is read: a folder holding another adapter needs --overwrite or --resume-from
    check_training_folder(args.output_dir, overwrite=getattr(args, "overwrite", False),
                          resume_from=getattr(args, "resume_from", None))  # fmt: skip
    data = load_training_data(data_options(args), num_labels=num_labels_of(args))
    return train(
        training_config(args, data), data.train, data.eval, val_samples=data.val, val_source=data.val_source,
        progress=not args.quiet,
    )


def print_training_result(result) -> None:
    if result.interrupted:
        return
    print(f"adapter written to {result.output_dir} after {result.steps} steps ({result.seconds:.1f} s)")
    if result.metrics:
        print(format_paper_table(result.metrics, title=f"evaluation of the saved adapter (step {result.best_step})"))


def run_train(args: argparse.Namespace) -> int:
    result = run_training(args)
    print_training_result(result)
    if result.interrupted:  # the checkpoint is saved; the shell still learns the run did not finish
        return 128 + int(result.signal or 2)
    return 0


# -- compare -----------------------------------------------------------------------------------------------------------
def _methods(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except LoSamError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_compare_parser(sub) -> None:
    parser = sub.add_parser("compare", help="LoSAM vs head-only, LoRA and full fine-tuning on the same shots")
    add_training_options(parser)
    group = parser.add_argument_group("comparison")
    defaults = MethodOptions()
    group.add_argument("--methods", type=_methods, default=list(METHODS),
                       help=f"comma-separated subset of {','.join(METHODS)} (default: all)")  # fmt: skip
    group.add_argument("--lora-rank", type=int, default=defaults.lora_rank, help="(default: %(default)s)")
    group.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha, help="(default: %(default)s)")
    group.add_argument("--lora-targets", default=None,
                       help="comma-separated module names for LoRA (default: the base's attention projections, qkv on "
                            "SAM, q_proj,v_proj on DINOv2 and ViT)")  # fmt: skip
    group.add_argument("--device", default=None, help="evaluation device (default: best available)")
    group.add_argument("--dtype", default=None, help="evaluation autocast dtype: bf16, fp16 or fp32")
    group.add_argument("--eval-batch-size", type=int, default=1, help="(default: %(default)s)")
    group.add_argument("--keep-checkpoints", action="store_true", help="keep each method's resume checkpoint")
    parser.set_defaults(func=run_compare)


def _default_eval_samples(options, data) -> list | None:
    """Evaluation data when none was given: the dataset's test split, else the images not drawn as shots."""
    if options.dataset:
        spec = DATASETS.get(options.dataset)
        if spec is not None and "test" in spec.split_names and (options.split or "train") != "test":
            return samples_from_dataset(
                load_dataset_split(options.dataset, options.data_root, "test", skip_bad=options.skip_bad,
                                   options=options.dataset_options)  # fmt: skip
            )
    if (options.dataset or options.train_dir) and options.shots is not None:
        dataset = (
            load_folder(options.train_dir, skip_bad=options.skip_bad)
            if options.train_dir
            else load_dataset_split(options.dataset, options.data_root, options.split, skip_bad=options.skip_bad,
                                    default="train", options=options.dataset_options)  # fmt: skip
        )
        shots = {s.id for s in data.train}
        rest = [i for i, image_id in enumerate(dataset["id"]) if str(image_id) not in shots]
        if rest:
            return samples_from_dataset(dataset.select(rest))
    return None


def run_compare(args: argparse.Namespace) -> int:
    if getattr(args, "resume_from", None):
        raise DataError("losam compare trains every method from scratch; --resume-from is not supported")
    options = data_options(args)
    data = load_training_data(options, num_labels=num_labels_of(args))
    eval_samples = data.eval if data.eval is not None else _default_eval_samples(options, data)
    if not eval_samples:
        raise DataError(
            "losam compare needs evaluation data: --eval-dir, --eval-image/--eval-mask or --eval-dataset, or a "
            "--dataset with a test split, or --shots K so that the remaining images are used"
        )
    config = training_config(args, data)
    method_options = MethodOptions(
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()] if args.lora_targets else None,
    )
    comparison = compare_methods(
        config,
        data.train,
        eval_samples,
        methods=args.methods,
        options=method_options,
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
    return 0
