"""``losam predict``."""

from __future__ import annotations

import argparse
import sys

from ..errors import LoSamValueError
from ..pipeline import LoSamPipeline
from ..predict import predict_paths
from .options import checked


def add_predict_parser(sub) -> None:
    parser = sub.add_parser("predict", help="segment images, folders or globs with an adapter")
    parser.add_argument("--adapter", required=True, help="adapter folder or Hub id")
    parser.add_argument("--input", required=True, help="an image, a folder or a glob")
    parser.add_argument("--output-dir", required=True, help="output folder")
    parser.add_argument("--output", dest="output_dir", help=argparse.SUPPRESS)  # the name of earlier releases
    parser.add_argument("--base", default=None, help="override the base SAM checkpoint named by the adapter")
    parser.add_argument("--revision", default=None, help="pin a Hub revision of the adapter")
    parser.add_argument("--batch-size", type=checked(int, {"min": 1}, "--batch-size"), default=1,
                        help="images (or tiles) per forward pass (default: %(default)s)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: best available)")
    parser.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where supported)")
    parser.add_argument("--tile", type=checked(int, {"min": 16}, "--tile"), default=None,
                        help="tiled inference at native resolution with TILE×TILE windows, at least 16 pixels "
                             "(default: none, the whole image resized to the model's input)")  # fmt: skip
    parser.add_argument("--overlap", type=checked(float, {"min": 0.0, "below": 1.0}, "--overlap"), default=None,
                        help="fraction of a tile shared with its neighbours, in [0, 1) (default: 0.25; needs --tile)")  # fmt: skip
    parser.add_argument("--overlay", action="store_true", help="also write the image with the mask drawn over it")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    parser.add_argument("--resume", action="store_true", help="skip images whose outputs exist")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    if args.overlap is not None and args.tile is None:
        raise LoSamValueError("--overlap applies to tiled inference only; give --tile too")
    pipe = LoSamPipeline.from_pretrained(
        args.adapter, base=args.base, device=args.device, dtype=args.dtype, revision=args.revision
    )
    settings = dict(
        batch_size=args.batch_size, tile=args.tile, overlay=args.overlay, probabilities=args.probabilities,
        resume=args.resume, recursive=args.recursive, progress=not args.quiet,
    )  # fmt: skip
    if args.overlap is not None:
        settings["overlap"] = args.overlap
    summary = predict_paths(pipe, args.input, args.output_dir, **settings)
    print(summary.describe())
    if summary.failed:
        print(f"error: {len(summary.failed)} of {summary.total} input(s) could not be segmented", file=sys.stderr)
        return 1
    return 0
