"""``losam app``: the web app (Gradio, the ``[app]`` extra)."""

from __future__ import annotations

import argparse

from ..app import BUNDLED_BASES, DEFAULT_BASE, EXTRA_HINT
from ..errors import LoSamError
from .options import checked


def add_app_parser(sub) -> None:
    parser = sub.add_parser(
        "app",
        help="the web app: label one image, train, segment, take the adapter home (needs losam-peft[app])",
        description="Starts a local web app (Gradio) that labels one image, trains an adapter on it, segments images "
        "and packs the adapter and results as zips, with no network needed. Open the address it prints.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=checked(int, {"min": 1, "max": 65535}, "--port"), default=7860,
                        help="(default: %(default)s)")  # fmt: skip
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs a network)")
    parser.add_argument("--workdir", default="losam-app",
                        help="the app's working folder: uploads, runs, results and zips go there, nowhere else "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--base", default=DEFAULT_BASE,
                        help=f"the base the page starts with: a bundled encoder with random weights "
                             f"({', '.join(BUNDLED_BASES)}), a SAM checkpoint (local folder or Hub id) or an adapter "
                             "folder to continue (default: %(default)s)")  # fmt: skip
    parser.add_argument("--folder-root", default=None,
                        help="only server-side folders inside this one may be segmented or named as a base or adapter "
                             "(default: any folder the server can read)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..app_ui import launch
    except ImportError as err:
        raise LoSamError(f"losam app needs Gradio, which is not installed ({err}); {EXTRA_HINT}") from None
    launch(
        args.workdir, host=args.host, port=args.port, share=args.share, base=args.base, folder_root=args.folder_root
    )
    return 0
