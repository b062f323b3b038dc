"""``losam predict``."""

from __future__ import annotations

import argparse
import sys

from ..errors import LoSamValueError
from ..pipeline import LoSamPipeline
from ..predict import (
    OUTPUT_FORMATS,
    in_distributed_launch,
    launch_processes,
    predict_dataset,
    predict_paths,
    process_state,
)
from .options import add_keyword_options, checked, given

PREDICT_OPTIONS = {
    "batch_size": {"help": "images (or tiles) per forward pass", "type": int, "min": 1},
    "tile": {"help": "tiled inference at native resolution with TILE×TILE windows of at least 16 pixels", "type": int,
             "min": 16, "default_text": "none, the whole image resized to the model's input"},
    "overlap": {"help": "fraction of a tile shared with its neighbours, in [0, 1); needs --tile", "type": float,
                "min": 0.0, "below": 1.0},
    "overlay": {"help": "also write the image with the mask drawn over it"},
    "probabilities": {"help": "also write class probabilities"},
    "resume": {"help": "skip images whose outputs exist (refused if the folder's adapter or settings differ)"},
    "overwrite": {"help": "replace the outputs of an earlier run in --output-dir (only a folder predict wrote)"},
    "num_workers": {"help": "DataLoader workers decoding and preprocessing images, 0 for none", "type": int,
                    "min": 0, "default_text": "min(4, CPUs per process - 1)"},
    "shard_size": {"help": "rows per parquet shard with --output-format dataset", "type": int, "min": 1},
}  # fmt: skip
FILE_OPTIONS = {"recursive": {"help": "descend into sub-folders of folder inputs"}}
DATASET_ONLY = ("split", "image_column", "id_column", "streaming", "no_fov")


def add_predict_parser(sub) -> None:
    parser = sub.add_parser("predict", help="segment images, folders, globs or datasets with an adapter")
    parser.add_argument("--adapter", required=True, help="adapter folder or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image, a folder or a glob")
    source.add_argument("--input-dataset", metavar="PATH_OR_HUB_ID",
                        help="a dataset: a save_to_disk folder, a data file or folder, or a Hub id")  # fmt: skip
    parser.add_argument("--output-dir", required=True, help="output folder")
    parser.add_argument("--output", dest="output_dir", help=argparse.SUPPRESS)  # the name of earlier releases
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default="files",
                        help="files: PNG masks in masks/; dataset: parquet shards in data/ (default: files)")  # fmt: skip
    parser.add_argument("--base", default=None, help="override the base SAM checkpoint named by the adapter")
    parser.add_argument("--revision", default=None, help="pin a Hub revision of the adapter")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: best available)")
    parser.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where supported)")
    parser.add_argument("--fov", default=None, metavar="DIR_OR_COLUMN",
                        help="FOV masks: with --input a folder of masks matched by image stem (S.png, S_mask.gif…); "
                        "with --input-dataset a column (default: the column fov, if any). Predictions outside the "
                        "FOV are set to 0")  # fmt: skip
    add_keyword_options(parser, predict_paths, PREDICT_OPTIONS)
    add_keyword_options(parser, predict_paths, FILE_OPTIONS)
    data = parser.add_argument_group("with --input-dataset")
    data.add_argument("--split", default=None, help="the split to read (needed when there are several)")
    data.add_argument("--image-column", default="image", help="the column of images (default: image)")
    data.add_argument("--id-column", default=None, help="the column naming each example (default: id, if any, else "
                      "the row number)")  # fmt: skip
    data.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    data.add_argument("--no-fov", action="store_true", help="ignore the dataset's fov column")
    parser.add_argument("--num-processes", type=checked(int, {"min": 1}, "--num-processes"), default=1,
                        help="run as N local processes sharing the inputs (like accelerate launch; default: 1)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (slow first images, faster after; most worth it on a GPU)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_predict, predict_parser=parser)


def _relaunch_arguments(args: argparse.Namespace) -> list[str]:
    """The command line that gives ``args`` again, without ``--num-processes`` (for the launched processes)."""
    out, seen = ["predict"], set()
    for action in args.predict_parser._actions:
        dest = action.dest
        if not action.option_strings or dest in seen or dest in ("help", "num_processes") or not hasattr(args, dest):
            continue
        seen.add(dest)
        value = getattr(args, dest)
        flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse._StoreTrueAction):
            out += [flag] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            out += [] if value else [flag]
        elif value is not None:
            out += [flag, str(value)]
    return out


def run_predict(args: argparse.Namespace) -> int:
    settings = given(args, PREDICT_OPTIONS)
    if "overlap" in settings and settings.get("tile") is None:
        raise LoSamValueError("--overlap applies to tiled inference only; give --tile too")
    if "shard_size" in settings and args.output_format != "dataset":
        raise LoSamValueError("--shard-size applies to --output-format dataset only")
    if args.input_dataset is None:
        used = [n for n in DATASET_ONLY if getattr(args, n) not in (None, False) and not (n == "image_column" and
                getattr(args, n) == "image")]  # fmt: skip
        if used:
            raise LoSamValueError(f"--{used[0].replace('_', '-')} applies to --input-dataset only")
    elif getattr(args, "recursive", False):
        raise LoSamValueError("--recursive applies to --input only")
    if args.num_processes > 1 and not in_distributed_launch():
        return launch_processes(_relaunch_arguments(args), args.num_processes)
    device = args.device
    state = process_state(device)
    if state.num_processes > 1 and (device is None or str(device) == "cuda"):
        device = state.device  # one accelerator per process (cuda:LOCAL_RANK), or the CPU
    pipe = LoSamPipeline.from_pretrained(
        args.adapter, base=args.base, device=device, dtype=args.dtype, revision=args.revision
    )
    if args.compile:
        pipe.compile()
    common = dict(progress=not args.quiet, output_format=args.output_format, **settings)
    if args.input_dataset is not None:
        summary = predict_dataset(
            pipe, args.input_dataset, args.output_dir, split=args.split, image_column=args.image_column,
            id_column=args.id_column, fov_column=args.fov, use_fov=not args.no_fov, streaming=args.streaming,
            **common,
        )  # fmt: skip
    else:
        summary = predict_paths(pipe, args.input, args.output_dir, fov=args.fov,
                                recursive=getattr(args, "recursive", False), **common)  # fmt: skip
    if not summary.is_main:
        return 0  # the main process reports for the whole run
    print(summary.describe())
    if summary.failed:
        print(f"error: {len(summary.failed)} of {summary.total} input(s) could not be segmented", file=sys.stderr)
        return 1
    return 0
