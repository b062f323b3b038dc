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
