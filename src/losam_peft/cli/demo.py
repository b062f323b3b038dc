"""``losam demo``."""

from __future__ import annotations

import argparse

from ..demo import run_demo
from .options import checked


def add_demo_parser(sub) -> None:
    parser = sub.add_parser("demo", help="train and evaluate on synthetic retinas with a bundled tiny encoder")
    parser.add_argument("--output-dir", default="losam-demo", help="(default: %(default)s)")
    parser.add_argument("--steps", type=checked(int, {"min": 1}, "--steps"), default=None,
                        help="training steps (default: the demo's tuned value)")  # fmt: skip
    parser.add_argument("--size", type=checked(int, {"min": 64}, "--size"), default=256,
                        help="synthetic image size (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=checked(int, {"min": 0, "max": 2**32 - 1}, "--seed"), default=0,
                        help="(default: %(default)s)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(args.output_dir, steps=args.steps, seed=args.seed, size=args.size, progress=not args.quiet)
    return 0
