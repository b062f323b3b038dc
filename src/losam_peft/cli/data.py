"""``losam data convert``."""

from __future__ import annotations

import argparse

from ..data.loaders import convert
from ..errors import LoSamValueError
from ..labels import parse_label_names
from .common import add_dataset_options, dataset_options


def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    parser = data_sub.add_parser("convert", help="write a dataset to disk (and optionally the Hub)")
    parser.add_argument("--dataset", default=None, help="a dataset name (losam_peft.data.DATASETS) or 'folder'")
    parser.add_argument("--data-root", default=None, help="where the dataset's download is unpacked")
    # positionals of earlier releases: `losam data convert NAME ROOT`
    parser.add_argument("name", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("root", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help="where the converted dataset is written")
    parser.add_argument("--out", dest="output_dir", help=argparse.SUPPRESS)  # the name of earlier releases
    parser.add_argument("--split", default=None, help="one split only (default: all)")
    parser.add_argument("--format", choices=["arrow", "parquet"], default="arrow",
                        help="save_to_disk folder or parquet files (default: %(default)s)")  # fmt: skip
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload it to the Hub")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--labels", default=None, metavar="NAMES",
                        help="class names, e.g. background,vessel: for 'folder' the names of its class ids (default: "
                        "its id2label.json, else background,foreground); for a named dataset they must agree with "
                        "its own")  # fmt: skip
    add_dataset_options(parser)
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    name = args.dataset or args.name
    root = args.data_root or args.root
    if not name or not root:
        raise LoSamValueError("name the dataset and where it is: --dataset NAME --data-root ROOT")
    if not args.output_dir:
        raise LoSamValueError("say where the converted dataset goes: --output-dir DIR")
    labels = None
    if args.labels is not None:
        try:
            labels = parse_label_names(args.labels)
        except LoSamValueError as exc:
            raise LoSamValueError(f"--labels {args.labels!r}: {exc}") from None
    out = convert(
        name,
        root,
        args.output_dir,
        split=args.split,
        push_to_hub=args.push_to_hub,
        private=args.private,
        skip_bad=args.skip_bad,
        format=args.format,
        overwrite=args.overwrite,
        labels=labels,
        **dataset_options(args),
    )
    print(f"wrote {name} to {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
