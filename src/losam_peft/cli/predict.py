"""``losam predict``."""

from __future__ import annotations

import argparse
import sys

from ..errors import LoSamValueError
from ..pipeline import LoSamPipeline
from ..predict import predict_paths
from .options import add_keyword_options, given

PREDICT_OPTIONS = {
    "batch_size": {"help": "images (or tiles) per forward pass", "type": int, "min": 1},
    "tile": {"help": "tiled inference at native resolution with TILE×TILE windows of at least 16 pixels", "type": int,
             "min": 16, "default_text": "none, the whole image resized to the model's input"},
    "overlap": {"help": "fraction of a tile shared with its neighbours, in [0, 1); needs --tile", "type": float,
                "min": 0.0, "below": 1.0},
    "overlay": {"help": "also write the image with the mask drawn over it"},
    "probabilities": {"help": "also write class probabilities"},
    "resume": {"help": "skip images whose outputs exist"},
    "recursive": {"help": "descend into sub-folders of folder inputs"},
}  # fmt: skip


def add_predict_parser(sub) -> None:
    parser = sub.add_parser("predict", help="segment images, folders or globs with an adapter")
    parser.add_argument("--adapter", required=True, help="adapter folder or Hub id")
    parser.add_argument("--input", required=True, help="an image, a folder or a glob")
    parser.add_argument("--output-dir", required=True, help="output folder")
    parser.add_argument("--output", dest="output_dir", help=argparse.SUPPRESS)  # the name of earlier releases
    parser.add_argument("--base", default=None, help="override the base SAM checkpoint named by the adapter")
    parser.add_argument("--revision", default=None, help="pin a Hub revision of the adapter")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: best available)")
    parser.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where supported)")
    add_keyword_options(parser, predict_paths, PREDICT_OPTIONS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    settings = given(args, PREDICT_OPTIONS)
    if "overlap" in settings and settings.get("tile") is None:
        raise LoSamValueError("--overlap applies to tiled inference only; give --tile too")
    pipe = LoSamPipeline.from_pretrained(
        args.adapter, base=args.base, device=args.device, dtype=args.dtype, revision=args.revision
    )
    summary = predict_paths(pipe, args.input, args.output_dir, progress=not args.quiet, **settings)
    print(summary.describe())
    if summary.failed:
        print(f"error: {len(summary.failed)} of {summary.total} input(s) could not be segmented", file=sys.stderr)
        return 1
    return 0
