"""``losam``: the command line, a thin layer over the library (argparse, printing, exit codes; imported by nothing).

    losam demo                      train and evaluate on synthetic retinas with a bundled tiny encoder
    losam train ...                 train an adapter (also: accelerate launch examples/train.py ...)
    losam evaluate ...              evaluate an adapter on a dataset or folder
    losam compare ...               LoSAM against head-only, LoRA and full fine-tuning on the same shots
    losam predict ...               segment files, folders or globs
    losam push --adapter DIR --repo-id ID     upload an adapter with its card
    losam list-adapters             adapters on the Hub tagged "losam"
    losam data convert --dataset NAME --data-root ROOT --output-dir OUT   a dataset in the datasets format
    losam convert sam-checkpoint|reference-adapter IN.pth OUT_DIR ...     SAM/MedSAM .pth or the authors' weights
    losam app                       the web app (label, train, segment, download) at http://127.0.0.1:7860

Exit status: 0 done; 1 done, but some inputs failed (predict); 2 refused (one ``error: …`` line on stderr, from any
``LoSamError``, or argparse's own for a malformed option); 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys

from transformers.utils import logging as hf_logging

from ..data.sources import DataOptions
from ..errors import LoSamError
from ..training import TrainingConfig
from .app import add_app_parser
from .convert import add_convert_parser
from .data import add_data_parser
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .hub import add_hub_parsers
from .predict import add_predict_parser
from .train import add_compare_parser, add_train_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="losam", description="Learnable Ophthalmology SAM adapters")
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_compare_parser(sub)
    add_predict_parser(sub)
    add_hub_parsers(sub)
    add_data_parser(sub)
    add_convert_parser(sub)
    add_app_parser(sub)
    return parser


def _with_flags(message: str) -> str:
    """Library messages name settings as the API does (``train_image``); on the command line they are options."""
    # names that are also fields of saved config files stay as they are: there they name the file's field
    names = {n for cls in (DataOptions, TrainingConfig) for n in cls.__dataclass_fields__ if "_" in n}
    names -= {"image_size", "num_labels", "id2label", "output_dir"}
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(sorted(names, key=len, reverse=True)) + r")(?![\w/])")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # transformers draws a progress bar for every checkpoint it reads; on the command line that is noise on stderr
    hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except LoSamError as err:
        message = _with_flags(" ".join(str(err).split("\n"))) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
