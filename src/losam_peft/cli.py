"""``losam``: the command line, a thin layer over the library.

    losam demo                      train and evaluate on synthetic retinas with a bundled tiny encoder
    losam train ...                 train an adapter (also: accelerate launch examples/train.py ...)
    losam evaluate ...              evaluate an adapter on a dataset or folder
    losam compare ...               LoSAM against head-only, LoRA and full fine-tuning on the same shots
    losam predict ...               segment files, folders or globs
    losam push DIR --repo-id ID     upload an adapter with its card
    losam list-adapters             adapters on the Hub tagged "losam"
    losam data convert NAME ROOT    write a dataset to disk (or the Hub) in the datasets format
"""

from __future__ import annotations

import argparse
import sys


def _labels(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError("--labels needs at least two names, e.g. background,vessel")
    return dict(enumerate(names))


# -- training arguments, shared by `losam train`, `losam compare` and examples/train.py --------------------------------
def add_data_arguments(parser: argparse.ArgumentParser, *, evaluation: bool = True) -> None:
    data = parser.add_argument_group("training data (one of)")
    data.add_argument("--train-image", help="one-shot: the training image")
    data.add_argument("--train-mask", help="one-shot: its mask (0/255, 0/1, 1-bit, class ids or losam palette)")
    data.add_argument("--train-dir", help="few-shot: a folder with images/ and masks/ paired by file name")
    data.add_argument("--dataset", help="a dataset name (losam_peft.data.DATASETS), with --data-root")
    data.add_argument("--data-root", help="where the dataset's official download is unpacked")
    data.add_argument("--split", default=None, help="dataset split to train on (default: train, or all)")
    data.add_argument("--shots", type=int, default=None, help="draw K training images from the dataset/folder")
    data.add_argument("--shot-seed", type=int, default=0, help="seed of the K-shot draw (recorded in the outputs)")
    data.add_argument("--skip-bad", action="store_true", help="skip unreadable dataset files with a warning")
    if evaluation:
        ev = parser.add_argument_group("evaluation data (optional)")
        ev.add_argument("--eval-image", help="an evaluation image")
        ev.add_argument("--eval-mask", help="its mask")
        ev.add_argument("--eval-dir", help="a folder with images/ and masks/")
        ev.add_argument("--eval-dataset", help="a dataset name for evaluation (default: --dataset)")
        ev.add_argument("--eval-data-root", help="its root (default: --data-root)")
        ev.add_argument("--eval-split", default=None, help="its split (default: test when it exists)")
        ev.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (and at the end)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="where the adapter, card, metrics and logs go")
    parser.add_argument("--base", default="facebook/sam-vit-base", help="SAM checkpoint: Hub id or local folder")
    parser.add_argument("--num-labels", type=int, default=None, help="number of classes incl. background")
    parser.add_argument("--labels", type=_labels, default=None, help="class names, e.g. background,vessel")
    add_data_arguments(parser)
    recipe = parser.add_argument_group("recipe (the paper's by default)")
    recipe.add_argument("--preset", choices=["default", "paper"], default="default",
                        help="paper: 1024 plain resize, mean/std 0.5, 32 epochs of batch 1")  # fmt: skip
    recipe.add_argument("--image-size", type=int, default=None, help="encoder input size (default: checkpoint's)")
    recipe.add_argument("--epochs", type=int, default=None, help="epochs over the training images (default 32)")
    recipe.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    recipe.add_argument("--batch-size", type=int, default=1)
    recipe.add_argument("--gradient-accumulation-steps", type=int, default=1)
    recipe.add_argument("--learning-rate", type=float, default=0.05)
    recipe.add_argument("--weight-decay", type=float, default=5e-4)
    recipe.add_argument("--momentum", type=float, default=0.9)
    recipe.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    recipe.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    recipe.add_argument("--no-augment", dest="augment", action="store_false", help="no colour jitter and flips")
    recipe.add_argument("--reduction", type=int, default=4, help="prompt layer channel reduction r")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--no-fast-path", dest="fast_path", action="store_false", help="transformers' stock attention")
    run = parser.add_argument_group("run")
    run.add_argument("--resume-from", default=None, help="a checkpoint folder (OUTPUT_DIR/checkpoint) to resume")
    run.add_argument("--save-every", type=int, default=0, help="write a resume checkpoint every N steps")
    run.add_argument("--log-with", default="auto", help="Accelerate tracker: auto (TensorBoard if installed), none, …")
    run.add_argument("--modality", default=None, help="fundus, octa, oct … (model card)")
    run.add_argument("--task", default=None, help="vessels, lesions, layers … (model card)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def training_config_from_args(args: argparse.Namespace, data):
    """The ``TrainingConfig`` of ``losam train``/``losam compare`` arguments and the data they loaded."""
    from .data.io import DataError
    from .training import TrainingConfig

    id2label = args.labels or data.id2label
    if args.num_labels is not None:
        if id2label is not None and len(id2label) != args.num_labels:
            raise DataError(f"--num-labels {args.num_labels} disagrees with the labels {list(id2label.values())}")
        id2label = id2label or {i: ("background" if i == 0 else f"class_{i}") for i in range(args.num_labels)}
    return TrainingConfig(
        output_dir=args.output_dir,
        base=args.base,
        id2label=id2label,
        preset=args.preset,
        image_size=args.image_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
        mixed_precision=args.mixed_precision,
        augment=args.augment,
        seed=args.seed,
        reduction=args.reduction,
        eval_every=getattr(args, "eval_every", 0),
        save_every=args.save_every,
        log_with=args.log_with,
        fast_path=args.fast_path,
        modality=args.modality or data.modality,
        task=args.task or data.task,
        resume_from=args.resume_from,
        train_ids=[s.id for s in data.train],
        eval_ids=[s.id for s in data.eval] if data.eval else [],
        datasets=data.datasets,
    )


def run_training(args: argparse.Namespace):
    from .data.sources import load_training_data
    from .training import train

    data = load_training_data(args)
    return train(training_config_from_args(args, data), data.train, data.eval, progress=not args.quiet)


def print_training_result(result) -> None:
    from .metrics import format_paper_table

    if result.interrupted:
        return
    print(f"adapter written to {result.output_dir} after {result.steps} steps ({result.seconds:.1f} s)")
    if result.metrics:
        print(format_paper_table(result.metrics, title=f"validation (best step {result.best_step})"))


# -- subcommands -----------------------------------------------------------------------------------------------------
def _cmd_demo(args):
    from .demo import run_demo

    run_demo(args.output_dir, steps=args.steps, seed=args.seed, size=args.size, progress=not args.quiet)


def _cmd_train(args):
    print_training_result(run_training(args))


def _cmd_evaluate(args):
    from .evaluation import evaluate_command

    evaluate_command(args)


def _cmd_compare(args):
    from .compare import compare_command

    compare_command(args)


def _cmd_predict(args):
    from .pipeline import LoSamPipeline
    from .predict import predict_paths

    pipe = LoSamPipeline.from_pretrained(
        args.adapter, base=args.base, device=args.device, dtype=args.dtype, revision=args.revision
    )
    summary = predict_paths(
        pipe,
        args.input,
        args.output,
        batch_size=args.batch_size,
        tile=args.tile,
        overlap=args.overlap,
        overlay=args.overlay,
        probabilities=args.probabilities,
        resume=args.resume,
    )
    print(summary.describe())


def _cmd_push(args):
    from .hub import push_adapter

    url = push_adapter(args.folder, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.folder} to {url}")


def _cmd_list_adapters(args):
    from .hub import find_adapters, format_adapters

    found = find_adapters(modality=args.modality, task=args.task, search=args.search, limit=args.limit)
    if not found:
        print("no adapters found on the Hub with the 'losam' tag" + (f" and modality {args.modality}" if args.modality else ""))
        return
    print(format_adapters(found))


def _cmd_data_convert(args):
    from .data import convert

    out = convert(
        args.name,
        args.root,
        args.out,
        split=args.split,
        push_to_hub=args.push_to_hub,
        private=args.private,
        skip_bad=args.skip_bad,
        format=args.format,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.name} to {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="losam", description="Learnable Ophthalmology SAM adapters")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train and evaluate on synthetic retinas with a bundled tiny encoder")
    demo.add_argument("--output-dir", default="losam-demo")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's tuned value)")
    demo.add_argument("--size", type=int, default=256, help="synthetic image size")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="train a LoSAM adapter")
    add_training_arguments(train)
    train.set_defaults(func=_cmd_train)

    from .compare import add_compare_arguments
    from .evaluation import add_evaluate_arguments

    evaluate = sub.add_parser("evaluate", help="evaluate an adapter on a dataset or folder")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    compare = sub.add_parser("compare", help="LoSAM vs head-only, LoRA and full fine-tuning on the same shots")
    add_compare_arguments(compare)
    compare.set_defaults(func=_cmd_compare)

    predict = sub.add_parser("predict", help="segment images, folders or globs with an adapter")
    predict.add_argument("--adapter", required=True, help="adapter folder or Hub id")
    predict.add_argument("--input", required=True, help="an image, a folder or a glob")
    predict.add_argument("--output", required=True, help="output folder")
    predict.add_argument("--base", default=None, help="override the base SAM checkpoint named by the adapter")
    predict.add_argument("--revision", default=None, help="pin a Hub revision of the adapter")
    predict.add_argument("--batch-size", type=int, default=1)
    predict.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: best available)")
    predict.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where supported)")
    predict.add_argument("--tile", type=int, default=None,
                         help="tiled inference at native resolution with this tile size (0: whole-image resize)")  # fmt: skip
    predict.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    predict.add_argument("--overlay", action="store_true", help="also write the image with the mask drawn over it")
    predict.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    predict.add_argument("--resume", action="store_true", help="skip images whose outputs exist")
    predict.set_defaults(func=_cmd_predict)

    push = sub.add_parser("push", help="upload an adapter folder with its model card to the Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None)
    push.set_defaults(func=_cmd_push)

    listing = sub.add_parser("list-adapters", help="LoSAM adapters on the Hub")
    listing.add_argument("--modality", default=None)
    listing.add_argument("--task", default=None)
    listing.add_argument("--search", default=None)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=_cmd_list_adapters)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    convert = data_sub.add_parser("convert", help="write a dataset to disk (and optionally the Hub)")
    convert.add_argument("name")
    convert.add_argument("root")
    convert.add_argument("--out", required=True)
    convert.add_argument("--split", default=None)
    convert.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    convert.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    convert.add_argument("--private", action="store_true")
    convert.add_argument("--skip-bad", action="store_true")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(func=_cmd_data_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data.io import DataError
    from .hub import AdapterFolderError, HubError
    from .loading import CheckpointError
    from .predict import PredictionError
    from .training import TrainingError

    try:
        args.func(args)
    except (DataError, CheckpointError, TrainingError, PredictionError, AdapterFolderError, HubError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

