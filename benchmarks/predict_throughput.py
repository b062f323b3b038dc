#!/usr/bin/env python
"""End-to-end ``losam predict`` throughput against the raw batched forward pass, on the same machine and model.

* **raw forward**: the images are decoded and preprocessed beforehand (not timed); the timed loop is only
  ``pipeline.forward_logits`` over batches of ``--batch-size``: the most the model can do.
* **end to end**: :func:`losam_peft.predict.predict_paths` on the image files: decoding and preprocessing in the
  DataLoader workers, the forward pass, post-processing (resize back to the image size, softmax), PNG encoding and
  atomic writes in the writer thread, the summary CSV.

The ratio end-to-end / raw says how much of the model's speed predict keeps (issue #14's target: at least 90%).

Inputs: the 40 DRIVE images (``../shared/data/DRIVE/{training,test}/images``) reused in turn until there are
``--images`` of them, or synthetic fundus images when DRIVE is not there. The model is a randomly initialised
LoSAM model (``--encoder tiny`` or ``vit_b``-shaped) at ``--image-size`` (default: SAM's 1024 for vit_b, 64 for
tiny), the adapter's size. On a shared CPU other processes' load moves both numbers; the script records the load
average and the process CPU time (workers included) of each phase.

    python benchmarks/predict_throughput.py --encoder vit_b --images 50 --batch-size 2 --threads 1
    python benchmarks/predict_throughput.py --encoder tiny --images 50 --repeat 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DRIVE = REPO.parent / "shared" / "data" / "DRIVE"


def build_pipeline(encoder: str, image_size: int, device: str, dtype: str | None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import build_model  # the benchmarks' one model builder (random, realistically scaled weights)

    from losam_peft import LoSamImageProcessor
    from losam_peft.pipeline import LoSamPipeline

    model = build_model(encoder, image_size, torch.device(device)).eval()
    processor = LoSamImageProcessor(image_size=image_size)
    return LoSamPipeline(model, processor, device=device, dtype=dtype, id2label={0: "background", 1: "vessel"})


def gather_images(folder: Path, count: int, images_dir: Path | None = None) -> str:
    if images_dir is not None:
        sources = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg"))
        if not sources:
            raise SystemExit(f"error: {images_dir}: no .tif/.png/.jpg images")
        what = f"{images_dir.name} ({len(sources)} distinct images, reused in turn)"
    else:
        sources = sorted(DRIVE.glob("*/images/*.tif")) if DRIVE.is_dir() else []
        what = f"DRIVE ({len(sources)} distinct images, 565x584, reused in turn)"
    if sources:
        for i in range(count):
            src = sources[i % len(sources)]
            shutil.copyfile(src, folder / f"{i:03d}_{src.name}")
        return what
    from PIL import Image

    from losam_peft.data.synthetic import fundus

    for i in range(count):
        Image.fromarray(np.asarray(fundus(584, 565, seed=i)[0])).save(folder / f"{i:03d}_synthetic.png")
    return "synthetic fundus images 565x584 (DRIVE not found)"


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", choices=["tiny", "vit_b"], default="vit_b")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None, help="default: predict's own default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bf16, fp16, fp32 (default: the pipeline's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (raw, end to end); the medians are shown")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--images-dir", type=Path, default=None,
                        help="take the inputs from this folder (default: DRIVE's 40 images, else synthetic ones)")
    args = parser.parse_args(argv)

    from losam_peft.predict import default_num_workers, predict_paths

    if args.threads:
        torch.set_num_threads(args.threads)
    image_size = args.image_size or (1024 if args.encoder == "vit_b" else 64)
    pipe = build_pipeline(args.encoder, image_size, args.device, args.dtype)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    root = Path(tempfile.mkdtemp(prefix="losam-predict-bench-"))
    try:
        images = root / "images"
        images.mkdir()
        what = gather_images(images, args.images, args.images_dir)
        files = sorted(images.iterdir())

        # raw forward: preprocessing done beforehand, only the model is timed
        pixel_values = torch.cat([pipe.image_processor.preprocess([str(f)])["pixel_values"] for f in files])
        def sync():  # CUDA runs asynchronously: the clock stops when the device is done
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()

        for _ in range(3):
            pipe.forward_logits(pixel_values[: args.batch_size])  # warm-up
        sync()
        raw, e2e = [], []
        for round_ in range(args.repeat):  # raw and end to end take turns, so that load hits both alike
            load = os.getloadavg()[0]
            cpu0, start = cpu_seconds(), time.perf_counter()
            for i in range(0, len(files), args.batch_size):
                pipe.forward_logits(pixel_values[i : i + args.batch_size])
            sync()
            raw.append((time.perf_counter() - start, cpu_seconds() - cpu0, load))
            load = os.getloadavg()[0]
            cpu0, start = cpu_seconds(), time.perf_counter()
            summary = predict_paths(pipe, images, root / f"out{round_}", batch_size=args.batch_size,
                                    num_workers=workers, progress=False)  # fmt: skip
            e2e.append((time.perf_counter() - start, cpu_seconds() - cpu0, load))
            assert summary.processed == len(files) and not summary.failed, summary.describe()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())  # fmt: skip
    raw_s, raw_cpu, _ = sorted(raw)[len(raw) // 2]  # the median round
    e2e_s, e2e_cpu, _ = sorted(e2e)[len(e2e) // 2]
    result = {
        "machine": f"{cpu_model}, {os.cpu_count()} CPUs" if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "encoder": f"{args.encoder}-shaped, random weights",
        "image_size": image_size,
        "dtype": "float32" if pipe.dtype is None else str(pipe.dtype).replace("torch.", ""),
        "images": len(files),
        "inputs": what,
        "batch_size": args.batch_size,
        "num_workers": workers,
        "rounds": args.repeat,
        "raw_img_per_s": round(len(files) / raw_s, 3),
        "e2e_img_per_s": round(len(files) / e2e_s, 3),
        "ratio": round(raw_s / e2e_s, 3),
        "raw_cpu_s_per_img": round(raw_cpu / len(files), 3),
        "e2e_cpu_s_per_img": round(e2e_cpu / len(files), 3),
        "raw_rounds_s": [round(r[0], 2) for r in raw],
        "e2e_rounds_s": [round(r[0], 2) for r in e2e],
        "load_avg_1min": [round(r[2], 2) for pair in zip(raw, e2e) for r in pair] + [round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result, indent=1))
    print(
        f"| {result['encoder']} {image_size}² {result['dtype']} | {args.batch_size} | {workers} | "
        f"{result['raw_img_per_s']:.3f} | {result['e2e_img_per_s']:.3f} | **{result['ratio']:.0%}** | "
        f"{result['raw_cpu_s_per_img']:.2f} / {result['e2e_cpu_s_per_img']:.2f} | "
        f"{min(result['load_avg_1min'])}–{max(result['load_avg_1min'])} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
