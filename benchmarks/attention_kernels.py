#!/usr/bin/env python
"""Micro-benchmark of the fast path's attention formulations for one SAM global layer (CPU).

Interleaves the variants, repeats them, and prints the min and median seconds of each: the folded SDPA
(``hd + H + W`` wide) against the bias chunks (SDPA at the head dim plus a bias chunk), for inference and for a
forward + backward (the fold vs the bias-chunk forward with its chunked backward, ``_BiasChunkAttention``).

    python benchmarks/attention_kernels.py                      # vit_b global layer: 12 heads, 64x64 grid
    python benchmarks/attention_kernels.py --grid 14 --batch 25 # the 25 windows of a vit_b windowed layer
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from losam_peft.fast_path import _bias_chunk_attention, _BiasChunkAttention, folded_rel_pos_attention


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args(argv)
    print(f"# load {os.getloadavg()} threads {torch.get_num_threads()} torch {torch.__version__}", flush=True)
    b, n, h, d = args.batch, args.heads, args.grid, args.head_dim
    for name in args.dtypes.split(","):
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
        torch.manual_seed(0)
        leaves = [torch.randn(b, n, h * h, d) for _ in range(3)] + [torch.randn(b, n, h, h, h) for _ in range(2)]
        leaves = [t.to(dtype).requires_grad_() for t in leaves]
        grad_out = torch.randn(b, n, h * h, d).to(dtype)
        scale = d**-0.5

        def infer(fn):
            def run():
                with torch.no_grad():
                    fn(*leaves, scale)

            return run

        variants = {
            "infer fold": infer(folded_rel_pos_attention),
            "infer bias chunks": infer(_bias_chunk_attention),
        }
        if not args.no_train:
            variants["train fold"] = lambda: folded_rel_pos_attention(*leaves, scale).backward(grad_out)
            variants["train bias chunks + chunked backward"] = lambda: _BiasChunkAttention.apply(
                *leaves, scale
            ).backward(grad_out)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for key, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        for key, ts in times.items():
            print(f"{name} {key}: min {min(ts):.3f} s, median {statistics.median(ts):.3f} s", flush=True)
    print(f"# load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
