"""Smoke test of benchmarks/bench.py on a tiny CPU config (no timing thresholds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("losam_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_cpu_smoke(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--preset", "cpu-smoke", "--threads", "1", "--iters", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | path | mode | dtype |" in printed

    payload = json.loads(out.read_text())
    assert payload["preset"] == "cpu-smoke"
    assert "torch" in payload["machine"]
    results = payload["results"]
    seen = {(r["path"], r["mode"], r["dtype"]) for r in results}
    for path in ("stock", "fast"):
        for mode in ("train", "infer"):
            for dtype in ("fp32", "bf16"):
                assert (path, mode, dtype) in seen
    for r in results:
        assert r["error"] is None, r
        assert r["ms_per_step"] > 0 and r["images_per_s"] > 0
        assert r["model_gflop_per_step"] and r["model_gflop_per_step"] > 0
        assert r["exec_gflop_per_step"] and r["exec_gflop_per_step"] > 0
        assert r["tflops"] > 0
        assert r["peak_mem_gib"] is not None
    # training does forward + backward: more FLOPs than inference
    gflop = {(r["path"], r["mode"]): r["model_gflop_per_step"] for r in results}
    assert gflop[("stock", "train")] > gflop[("stock", "infer")]


def test_bench_gpu_preset_plan_on_cpu(tmp_path, capsys):
    """The gpu preset's own plan (bf16, eager phase for every model, then the compiled phase, gradient
    checkpointing rows, the time budget) run on CPU with a tiny model; compiled with dynamo's eager backend so that
    the compiled code path is traced without code generation."""
    bench = _load_bench()
    out = tmp_path / "gpu_plan.json"
    threads = torch.get_num_threads()
    argv = [
        "--preset", "gpu", "--device", "cpu", "--models", "tiny", "--image-size", "64", "--batch-sizes", "2",
        "--warmup", "1", "--iters", "1", "--grad-ckpt", "--compile-backend", "eager", "--threads", "1",
        "--json", str(out),
    ]  # fmt: skip
    try:
        rc = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | path | mode | dtype | compile |" in printed
    payload = json.loads(out.read_text())
    assert payload["preset"] == "gpu"
    results = payload["results"]
    assert all(r["error"] is None for r in results), [r for r in results if r["error"]]
    seen = {(r["path"], r["mode"], r["batch"], r["compiled"], r["checkpointing"]) for r in results}
    for mode in ("train", "infer"):
        assert ("stock", mode, 2, False, False) in seen
        assert ("fast", mode, 2, False, False) in seen
        assert ("fast", mode, 2, True, False) in seen  # the compiled phase
    assert ("fast", "train", 2, False, True) in seen  # gradient checkpointing rows
    assert {r["dtype"] for r in results} == {"bf16"}
    # eager rows of every model come before any compiled row
    compiled_flags = [r["compiled"] for r in results]
    assert compiled_flags == sorted(compiled_flags)
    for r in results:
        assert r["ms_per_step"] > 0 and r["peak_mem_gib"] is not None
        assert r["model_gflop_per_step"] and r["model_gflop_per_step"] > 0  # compiled rows reuse the eager counts
