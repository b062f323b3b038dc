#!/usr/bin/env python
"""Micro-benchmark of the fast path's attention formulations for one SAM global layer.

Interleaves the variants, repeats them, and prints the min and median seconds of each, for inference and for a
forward + backward.

On CPU: the folded SDPA (``hd + H + W`` wide) against the bias chunks (SDPA at the head dim plus a bias chunk), and
the fold's backward against the bias-chunk forward with its chunked backward (``_BiasChunkAttention``).

On CUDA (``--device cuda``): the folded SDPA (the fast path's CUDA formulation: flash attention at the padded
``hd + H + W`` width) against one SDPA call at the head dim with the dense (B, heads, HW, HW) bias (what
transformers' stock SDPA attention does; the memory-efficient kernel, which also returns the bias gradient) and,
with ``--flex``, FlexAttention compiled with the relative terms as a ``score_mod`` (the fast path's ``"flex"`` mode).
Times come from CUDA events around each call, warm-up (and compilation) excluded.

    python benchmarks/attention_kernels.py                      # vit_b global layer: 12 heads, 64x64 grid
    python benchmarks/attention_kernels.py --grid 14 --batch 25 # the 25 windows of a vit_b windowed layer
    python benchmarks/attention_kernels.py --device cuda --batch 4 --dtypes bf16 --flex --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from losam_peft.fast_path import (
    _bias_chunk_attention,
    _BiasChunkAttention,
    _flex_attention,
    folded_rel_pos_attention,
)


def dense_bias_attention(query, key, value, rel_h, rel_w, scale):
    """One SDPA call at the head dim with the whole (B, heads, HW, HW) relative-position bias."""
    b, n, seq, _ = query.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, seq, seq)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--flex", action="store_true", help="CUDA: also FlexAttention under torch.compile")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    print(f"# load {os.getloadavg()} threads {torch.get_num_threads()} torch {torch.__version__} device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""), flush=True)
    b, n, h, d = args.batch, args.heads, args.grid, args.head_dim
    for name in args.dtypes.split(","):
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
        torch.manual_seed(0)
        leaves = [torch.randn(b, n, h * h, d) for _ in range(3)] + [torch.randn(b, n, h, h, h) for _ in range(2)]
        leaves = [t.to(device, dtype).requires_grad_() for t in leaves]
        grad_out = torch.randn(b, n, h * h, d).to(device, dtype)
        scale = d**-0.5

        def infer(fn):
            def run():
                with torch.no_grad():
                    fn(*leaves, scale)

            return run

        def train(fn):
            return lambda: fn(*leaves, scale).backward(grad_out)

        if cuda:
            variants = {
                "infer fold (flash)": infer(folded_rel_pos_attention),
                "infer dense bias": infer(dense_bias_attention),
            }
            if not args.no_train:
                variants["train fold (flash)"] = train(folded_rel_pos_attention)
                variants["train dense bias"] = train(dense_bias_attention)
            if args.flex:
                flex = torch.compile(_flex_attention, dynamic=False)
                variants["infer flex (compiled)"] = infer(flex)
                if not args.no_train:
                    variants["train flex (compiled)"] = train(flex)
        else:
            variants = {
                "infer fold": infer(folded_rel_pos_attention),
                "infer bias chunks": infer(_bias_chunk_attention),
            }
            if not args.no_train:
                variants["train fold"] = train(folded_rel_pos_attention)
                variants["train bias chunks + chunked backward"] = train(_BiasChunkAttention.apply)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for key, fn in list(variants.items()):  # warm-up (and compilation)
            try:
                fn()
                fn()
            except Exception as exc:  # e.g. a kernel this GPU or torch lacks: report it, measure the others
                print(f"{name} {key}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                del variants[key], times[key]
        for _ in range(args.repeats):
            for key, fn in variants.items():
                for leaf in leaves:
                    leaf.grad = None
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    times[key].append(start.elapsed_time(end) / 1e3)
                else:
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
        for key, ts in times.items():
            unit, factor = ("ms", 1e3) if cuda else ("s", 1.0)
            print(f"{name} {key}: min {min(ts) * factor:.3f} {unit}, median {statistics.median(ts) * factor:.3f} {unit}",
                  flush=True)
    print(f"# load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
