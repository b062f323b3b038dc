"""``losam push`` and ``losam list-adapters``."""

from __future__ import annotations

import argparse

from ..errors import LoSamValueError
from ..hub import find_adapters, format_adapters, push_adapter
from .options import checked


def add_hub_parsers(sub) -> None:
    push = sub.add_parser("push", help="upload an adapter folder with its model card to the Hub")
    push.add_argument("--adapter", dest="adapter", default=None, help="the adapter folder to upload")
    push.add_argument("folder", nargs="?", default=None, help=argparse.SUPPRESS)  # the positional of earlier releases
    push.add_argument("--repo-id", required=True, help="the Hub repository, e.g. user/fundus-vessels")
    push.add_argument("--base-repo-id", default=None,
                      help="the Hub repository of the base, when the adapter was trained on a local copy of it")  # fmt: skip
    push.add_argument("--license", default=None,
                      help="licence of the uploaded adapter's card (a Hub licence id, e.g. apache-2.0; default: the "
                           "card's own)")  # fmt: skip
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.set_defaults(func=run_push)

    listing = sub.add_parser("list-adapters", help="LoSAM adapters on the Hub")
    listing.add_argument("--modality", default=None, help="fundus, octa, oct …")
    listing.add_argument("--task", default=None, help="vessels, lesions, layers …")
    listing.add_argument("--search", default=None, help="text to look for in repository names")
    listing.add_argument("--limit", type=checked(int, {"min": 1}, "--limit"), default=50,
                         help="at most this many (default: %(default)s)")  # fmt: skip
    listing.set_defaults(func=run_list_adapters)


def run_push(args: argparse.Namespace) -> int:
    folder = args.adapter or args.folder
    if not folder:
        raise LoSamValueError("name the adapter folder to push with --adapter")
    if args.adapter and args.folder and args.adapter != args.folder:
        raise LoSamValueError(f"two adapter folders given: --adapter {args.adapter} and {args.folder}")
    url = push_adapter(folder, args.repo_id, private=args.private, token=args.token, base_repo_id=args.base_repo_id,
                       license=args.license)  # fmt: skip
    print(f"pushed {folder} to {url}")
    return 0


def run_list_adapters(args: argparse.Namespace) -> int:
    found = find_adapters(modality=args.modality, task=args.task, search=args.search, limit=args.limit)
    if not found:
        extra = f" and modality {args.modality}" if args.modality else ""
        print(f"no adapters found on the Hub with the 'losam' tag{extra}")
        return 0
    print(format_adapters(found))
    return 0
