"""``losam evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import evaluate_adapter, load_evaluation_data, load_for_evaluation
from ..metrics import format_paper_table
from .common import add_dataset_options, dataset_options
from .options import add_keyword_options, given

EVALUATE_OPTIONS = {
    "batch_size": {"help": "images per forward pass", "type": int, "min": 1},
    "max_images": {"help": "evaluate only the first N images", "type": int, "min": 1, "default_text": "all"},
    "num_overlays": {"help": "overlays of the N best and N worst images", "type": int, "min": 0},
}


def add_evaluate_parser(sub) -> None:
    parser = sub.add_parser("evaluate", help="evaluate an adapter on a dataset or folder")
    parser.add_argument("--adapter", required=True,
                        help="adapter folder or Hub id (or a model folder from losam compare)")  # fmt: skip
    parser.add_argument("--base", default=None, help="override the base SAM checkpoint named by the adapter")
    data = parser.add_argument_group("evaluation data (a dataset, or --images with --masks)")
    data.add_argument("--dataset", default=None, help="a dataset name (losam_peft.data.DATASETS) or 'folder'")
    data.add_argument("--data-root", default=None, help="where the dataset's download is unpacked")
    data.add_argument("--split", default=None, help="split to evaluate (default: test where the dataset has one)")
    data.add_argument("--images", default=None, help="a folder of images (plain folder evaluation)")
    data.add_argument("--masks", default=None, help="the folder of their masks, paired by file name")
    data.add_argument("--fov-masks", default=None, help="optional folder of FOV masks paired by file name")
    data.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning")
    add_dataset_options(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True, help="where results.json, results.csv, overlays… go")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: best available)")
    run.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where supported)")
    add_keyword_options(run, evaluate_adapter, EVALUATE_OPTIONS)
    run.add_argument("--no-fov", dest="fov", action="store_false", help="evaluate every pixel, not only the FOV")
    run.add_argument("--level", choices=["dataset", "image"], default="dataset",
                     help="table of counts summed over the dataset (default) or of per-image means")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    pipe = load_for_evaluation(args.adapter, base=args.base, device=args.device, dtype=args.dtype)
    dataset, id2label, name = load_evaluation_data(
        dataset=args.dataset,
        data_root=args.data_root,
        split=args.split,
        images=args.images,
        masks=args.masks,
        fov_masks=args.fov_masks,
        options=dataset_options(args),
        skip_bad=args.skip_bad,
        adapter_labels=pipe.id2label,
    )
    results = evaluate_adapter(
        pipe,
        dataset,
        id2label,
        args.output_dir,
        use_fov=args.fov,
        progress=not args.quiet,
        **given(args, EVALUATE_OPTIONS),
        dataset_name=name,
    )
    info = results["evaluation"]
    fov_note = f", FOV masks on {info['images_with_fov']} images" if info["images_with_fov"] else ""
    title = f"{args.adapter} on {name}: {info['num_images']} images{fov_note} (percent)"
    print(format_paper_table(results, title=title, level=args.level))
    if info.get("skipped"):
        print(f"skipped {len(info['skipped'])} unusable image(s) (--skip-bad); each is listed with its problem in "
              "results.json under evaluation.skipped")  # fmt: skip
    outputs = results["outputs"]
    print(f"results: {outputs['results_json']}, {outputs['results_csv']}, {outputs['per_image_csv']}")
    if outputs.get("overlays"):
        print(f"overlays of the best and worst images: {Path(outputs['overlays'][0]).parent}/")
    if outputs.get("dice_plot"):
        print(f"per-image Dice plot: {outputs['dice_plot']}")
    return 0
