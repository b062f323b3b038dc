#!/usr/bin/env python
"""Stock vs fast encoder path of a LoSAM model, side by side, in one run.

For every configuration it measures a training step (forward + backward + SGD step over the trainable parameters,
i.e. the prompt layers and the head) and/or inference, and reports ms/step (median of the timed iterations),
images/s, achieved TFLOP/s and peak memory.  "stock" is the same model with ``disable_fast_path`` (transformers'
own ``SamVisionSdpaAttention``), "fast" with ``enable_fast_path``.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the first (warm-up) iteration of each
eager configuration.  The CPU flash-attention op is not in torch's FLOP registry, so its formula (the same as for
the CUDA SDPA ops) is supplied.  ``TFLOP/s`` uses the *model* FLOPs, i.e. the count of the stock path (the same
work for both paths, comparable with the reference table); ``exec_tflops`` in the JSON uses each path's own
count (the folded attention does more multiply-adds than the stock one).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed iterations (weights included).  On CPU the
resident set size (``/proc/self/statm``) is sampled every 2 ms during each timed step and the table shows the
largest peak *above* the RSS at the start of the step (activations, attention buffers, gradients: what the step
itself allocates; the weights are already resident).  It is a sampled value and glibc may keep freed memory
mapped (then a step reuses it without raising the RSS), so treat it as approximate.

On a shared CPU, other processes' load changes step times by 2x and more.  On CPU the configurations of one
(mode, batch) are therefore interleaved by default (stock and fast take turns, one timed step each, so that load
hits both alike), and each row also records the process CPU time per step (``CPU s/step``, all threads summed),
which is much less sensitive to that load than the wall-clock time.

Examples::

    python benchmarks/bench.py --preset cpu-smoke
    python benchmarks/bench.py --preset cpu --json cpu.json
    python benchmarks/bench.py --preset gpu --json gpu.json            # ~8 min on one H100
    python benchmarks/bench.py --preset gpu --models vit_b --batch-sizes 4 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import torch

PRESETS = {
    # a few seconds on a laptop CPU: exercises every code path of the benchmark
    "cpu-smoke": dict(
        device="cpu",
        models=["tiny"],
        batch_sizes=[2],
        image_size=64,
        modes=["train", "infer"],
        dtypes=["fp32", "bf16"],
        warmup=1,
        iters=2,
        compile=False,
        paths=["stock", "fast"],
    ),
    # the CPU targets: vit_b 1024^2 forward, stock float32 vs fast float32 vs fast bf16 autocast
    "cpu": dict(
        device="cpu",
        models=["vit_b"],
        batch_sizes=[1],
        image_size=1024,
        modes=["infer", "train"],
        dtypes=["fp32", "bf16"],
        warmup=1,
        iters=3,
        compile=False,
        paths=["stock", "fast"],
    ),
    # the GPU targets (one H100): vit_b/l/h at 1024^2, batch 1 and 4, bf16 autocast, eager and compiled
    "gpu": dict(
        device="cuda",
        models=["vit_b", "vit_h", "vit_l"],
        batch_sizes=[1, 4],
        image_size=1024,
        modes=["train", "infer"],
        dtypes=["bf16"],
        warmup=3,
        iters=10,
        compile=True,
        paths=["stock", "fast"],
        compile_batch_sizes=[4],
        checkpoint_models=["vit_h"],
        time_budget=480.0,
        # a compiled configuration starts only with this much of the budget left per transformer block of its model:
        # on an H200 (torch 2.11, 16 host cores) compiling vit_l's training step (24 blocks) took over 160 s
        compile_reserve_per_block=8.0,
    ),
}

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Result:
    model: str
    path: str
    mode: str
    dtype: str
    batch: int
    image_size: int
    compiled: bool = False
    checkpointing: bool = False
    ms_per_step: float | None = None
    ms_min: float | None = None
    ms_all: list = field(default_factory=list)
    images_per_s: float | None = None
    model_gflop_per_step: float | None = None
    exec_gflop_per_step: float | None = None
    tflops: float | None = None
    exec_tflops: float | None = None
    cpu_s_per_step: float | None = None
    device_is_cpu: bool = True
    peak_mem_gib: float | None = None
    peak_mem_kind: str = ""
    loadavg: list | None = None
    error: str | None = None
    # seconds of the warm-up steps (for a compiled configuration: compiling, then the warm-up steps)
    warmup_s: float | None = None


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------
def build_model(name: str, image_size: int, device: torch.device, num_labels: int = 2):
    """A LoSAM model with random (but realistically scaled) SAM weights, wrapped by PEFT."""
    import peft

    from losam_peft import LoSamConfig, SamForSemanticSegmentation, sam_vision_config

    if name == "tiny":
        config = sam_vision_config(
            "tiny",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            global_attn_indexes=[1],
            image_size=image_size,
            patch_size=8,
            window_size=4,
            output_channels=32,
            initializer_range=0.02,
            num_labels=num_labels,
        )
    else:
        config = sam_vision_config(name, image_size=image_size, initializer_range=0.02, num_labels=num_labels)
    torch.manual_seed(0)
    # Built on the device itself: initialising vit_h's 630 M weights on the host and copying them over takes longer
    # than most of its measurements.
    with torch.device(device):
        model = SamForSemanticSegmentation(config)
        with torch.no_grad():  # transformers zero-initialises the position tables; pretrained ones are not zero
            for pname, param in model.vision_encoder.named_parameters():
                if "rel_pos" in pname or "pos_embed" in pname:
                    param.normal_(0.0, 0.02)
        model = peft.get_peft_model(model, LoSamConfig())
    return model.to(device)


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------------------------------
def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernels (absent from torch's registry)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_flop
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_backward_flop
    return FlopCounterMode(display=False, custom_mapping=custom)


class RssSampler:
    """Peak resident set size above the value at start, sampled from /proc/self/statm in a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self.page
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_gib(self) -> float:
        return (self.peak - self.base) / 2**30


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["cpu_model"] = names[0] if names else None
        info["cpu_amx_bf16"] = "amx_bf16" in flags
        info["cpu_avx512_bf16"] = "avx512_bf16" in flags
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    from losam_peft.fast_path import default_autocast_dtype

    info["default_autocast_dtype"] = str(default_autocast_dtype(device))
    return info


# ----------------------------------------------------------------------------------------------------------------
# one configuration
# ----------------------------------------------------------------------------------------------------------------
class Runner:
    """One benchmark configuration on a shared model: its inputs, optimizer, step function and measurements."""

    def __init__(self, model, res: Result, device: torch.device, compile_backend: str = "inductor"):
        from losam_peft.fast_path import autocast_context

        self.model, self.res, self.device = model, res, device
        self.compile_backend = compile_backend
        self.runner = model
        self.amp = autocast_context(device, DTYPES[res.dtype])
        g = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(res.batch, 3, res.image_size, res.image_size, generator=g).to(device)
        num_labels = getattr(getattr(model, "config", None), "num_labels", 2)
        self.y = torch.randint(0, num_labels, (res.batch, res.image_size, res.image_size), generator=g).to(device)
        self.opt = None
        if res.mode == "train":
            # the paper's recipe: SGD with momentum (the reference adds Nesterov), trainable parameters only, so the
            # frozen encoder has no gradient buffers and no optimizer state
            self.opt = torch.optim.SGD(
                trainable_parameters(model), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True
            )
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.peak = 0.0

    def activate(self):
        """Put the shared model on this configuration's path (a class swap: cheap, so runs can interleave)."""
        from losam_peft.fast_path import disable_fast_path, enable_fast_path

        if self.res.path == "stock":
            # interleaved CPU runs keep the fast rows' cached bf16 weight casts; on GPU they would count as stock memory
            disable_fast_path(self.model, clear_cache=self.device.type == "cuda")
        else:
            enable_fast_path(self.model, gradient_checkpointing=self.res.checkpointing)
        self.model.train(self.res.mode == "train")
        if self.res.compiled and self.runner is self.model:
            torch._dynamo.reset()
            self.runner = torch.compile(self.model, backend=self.compile_backend)

    def step(self, amp=None):
        amp = self.amp if amp is None else amp
        if self.opt is not None:
            with amp:
                out = self.runner(pixel_values=self.x, labels=self.y)
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), amp:
                self.runner(pixel_values=self.x)

    def count_flops(self):
        """One extra, untimed step under FlopCounterMode, run without autocast.

        FlopCounterMode decomposes einsum below the autocast layer, which breaks transformers' mixed-dtype einsum under
        bf16 autocast; the count does not depend on the dtype. Out of memory in float32: no own count.
        """
        if self.res.compiled:
            return
        counter = flop_counter()
        try:
            with counter:
                self.step(contextlib.nullcontext())
            self.res.exec_gflop_per_step = counter.get_total_flops() / 1e9
        except torch.OutOfMemoryError:
            pass
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm(self, n: int):
        for _ in range(max(1, n)):
            self.step()
        sync(self.device)

    def timed(self, n: int):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(n):
            mem = contextlib.nullcontext() if cuda else RssSampler()
            sync(self.device)
            with mem:
                t0, c0 = time.perf_counter(), time.process_time()
                self.step()
                sync(self.device)
                self.times.append(time.perf_counter() - t0)
                self.cpu_times.append(time.process_time() - c0)
            if not cuda:
                self.peak = max(self.peak, mem.delta_gib)
        if cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) / 2**30)

    def finish(self):
        res = self.res
        res.peak_mem_gib = self.peak
        res.peak_mem_kind = (
            "cuda max_memory_allocated"
            if self.device.type == "cuda"
            else "peak RSS above the start of each timed step (sampled)"
        )
        res.ms_all = [round(t * 1e3, 2) for t in self.times]
        res.ms_per_step = statistics.median(self.times) * 1e3
        res.ms_min = min(self.times) * 1e3
        res.cpu_s_per_step = statistics.median(self.cpu_times)
        res.device_is_cpu = self.device.type == "cpu"
        res.images_per_s = res.batch / (res.ms_per_step / 1e3)

    def profile(self) -> str:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        cuda = self.device.type == "cuda"
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts) as prof:
            self.step()
            sync(self.device)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _cleanup(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------------------------
def fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown_table(results: list[Result]) -> str:
    head = (
        "| model | path | mode | dtype | compile | ckpt | batch | ms/step (median) | ms (min) | CPU s/step | img/s "
        "| TFLOP/s | peak mem (GiB) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cols = [
            r.model,
            r.path,
            r.mode,
            r.dtype,
            "yes" if r.compiled else "no",
            "yes" if r.checkpointing else "no",
            str(r.batch),
        ]
        if r.error:
            cols += [r.error, "", "", "", "", ""]
        else:
            cols += [
                fmt(r.ms_per_step, ".1f"),
                fmt(r.ms_min, ".1f"),
                fmt(r.cpu_s_per_step, ".2f"),
                fmt(r.images_per_s, ".2f"),
                fmt(r.tflops, ".3f"),
                fmt(r.peak_mem_gib, ".2f"),
            ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def speedups(results: list[Result]) -> list[str]:
    """fast vs stock-fp32 ratios of the median step time, per (model, mode, batch, compile)."""
    out = []
    base = {
        (r.model, r.mode, r.batch): r
        for r in results
        if r.path == "stock" and r.dtype == "fp32" and not r.compiled and r.ms_per_step
    }
    base_same = {
        (r.model, r.mode, r.batch, r.dtype): r
        for r in results
        if r.path == "stock" and not r.compiled and r.ms_per_step
    }
    for r in results:
        if r.path != "fast" or not r.ms_per_step:
            continue
        b = base.get((r.model, r.mode, r.batch))
        s = base_same.get((r.model, r.mode, r.batch, r.dtype))
        parts = []

        def ratio(base: Result) -> str:
            text = f"{base.ms_per_step / r.ms_per_step:.2f}x"
            if base.cpu_s_per_step and r.cpu_s_per_step and r.device_is_cpu:
                text += f" (CPU time {base.cpu_s_per_step / r.cpu_s_per_step:.2f}x)"
            return text

        if b:
            parts.append(f"{ratio(b)} vs stock fp32")
        if s and s is not b:
            parts.append(f"{ratio(s)} vs stock {r.dtype}")
        if parts:
            tag = f"{r.model} {r.mode} b{r.batch} fast {r.dtype}{' compiled' if r.compiled else ''}" + (
                " ckpt" if r.checkpointing else ""
            )
            out.append(f"- {tag}: " + ", ".join(parts))
    return out


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    p.add_argument("--models", help="comma list of vit_b, vit_l, vit_h, tiny")
    p.add_argument("--batch-sizes", help="comma list, e.g. 1,4")
    p.add_argument("--image-size", type=int)
    p.add_argument("--modes", help="comma list of train, infer")
    p.add_argument("--dtypes", help="comma list of fp32, bf16, fp16 (autocast dtype), or auto")
    p.add_argument("--paths", help="comma list of stock, fast")
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="also run the fast path under torch.compile",
    )
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default inductor; 'eager' exercises the compiled code path without codegen)",
    )
    p.add_argument("--device", help="override the preset's device (e.g. run the gpu preset's plan on cpu as a smoke)")
    p.add_argument("--compile-stock", action="store_true", help="compile the stock path too")
    p.add_argument("--grad-ckpt", action="store_true", help="add fast-path training runs with gradient checkpointing")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--time-budget", type=float, help="seconds; remaining configurations are skipped after it")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--profile", action="store_true", help="print torch.profiler top ops of each fast configuration")
    p.add_argument(
        "--profile-models", help="with --profile: only these models (comma list; default every model)"
    )
    p.add_argument(
        "--interleave",
        dest="interleave",
        action="store_true",
        default=None,
        help="alternate the configurations of one (mode, batch) step by step (default on CPU)",
    )
    p.add_argument("--no-interleave", dest="interleave", action="store_false")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    split = lambda s: [t.strip() for t in s.split(",") if t.strip()]  # noqa: E731
    if args.models:
        cfg["models"] = split(args.models)
    if args.batch_sizes:
        cfg["batch_sizes"] = [int(t) for t in split(args.batch_sizes)]
        cfg["compile_batch_sizes"] = cfg["batch_sizes"]
    if args.image_size:
        cfg["image_size"] = args.image_size
    if args.modes:
        cfg["modes"] = split(args.modes)
    if args.paths:
        cfg["paths"] = split(args.paths)
    if args.warmup is not None:
        cfg["warmup"] = args.warmup
    if args.iters is not None:
        cfg["iters"] = args.iters
    if args.compile is not None:
        cfg["compile"] = args.compile
    if args.time_budget is not None:
        cfg["time_budget"] = args.time_budget
    if args.grad_ckpt:
        cfg["checkpoint_models"] = cfg["models"]
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device:
        cfg["device"] = args.device
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: the gpu preset needs a CUDA device", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    from losam_peft.fast_path import default_autocast_dtype

    dtypes = []
    for d in split(args.dtypes) if args.dtypes else cfg["dtypes"]:
        if d == "auto":
            auto = default_autocast_dtype(device)
            d = {None: "fp32", torch.bfloat16: "bf16"}[auto]
        if d not in DTYPES:
            print(f"error: unknown dtype {d}", file=sys.stderr)
            return 2
        if d == "bf16" and device.type == "cpu" and default_autocast_dtype(device) is None:
            print("note: this CPU has no native bf16; bf16 runs are emulated and slow", file=sys.stderr)
        dtypes.append(d)

    started = time.perf_counter()
    budget = cfg.get("time_budget")
    info = machine_info(device)
    print(f"# bench preset={args.preset} device={device} " + " ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    results: list[Result] = []
    profiles: dict[str, str] = {}
    profile_models = split(args.profile_models) if args.profile_models else []

    def write_json(final: bool) -> None:
        """The results so far (after every group, so that a run cut short by a time limit keeps what it measured)."""
        if not args.json:
            return
        payload = {
            "preset": args.preset,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "machine": info,
            "config": {k: v for k, v in cfg.items()},
            "dtypes": dtypes,
            "complete": final,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "results": [asdict(r) for r in results],
            "speedups": speedups(results),
            "profiles": profiles,
        }
        path = os.path.abspath(args.json)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(path + ".tmp", path)

    flops_by_model: dict[str, dict[tuple, float]] = {}
    # Eager configurations of every model first, compiled ones after them: under the time budget the table then has
    # every model's eager rows before any time goes into compiling.
    schedule = [(name, False) for name in cfg["models"]]
    if cfg["compile"]:
        schedule += [(name, True) for name in cfg["models"]]
    for name, phase_compiled in schedule:
        if budget and time.perf_counter() - started > budget:
            results.append(
                Result(
                    name, "-", "-", "-", 0, cfg["image_size"], compiled=phase_compiled, error="skipped (time budget)"
                )
            )
            continue
        model = build_model(name, cfg["image_size"], device)
        model_flops = flops_by_model.setdefault(name, {})
        interleave = cfg.get("interleave", device.type == "cpu") if args.interleave is None else args.interleave
        plan = []
        if not phase_compiled:
            for mode in cfg["modes"]:
                for batch in cfg["batch_sizes"]:
                    for dtype in dtypes:
                        for path in cfg["paths"]:
                            plan.append((mode, batch, dtype, path, False, False))
                        if mode == "train" and name in cfg.get("checkpoint_models", []) and "fast" in cfg["paths"]:
                            plan.append((mode, batch, dtype, "fast", False, True))
        else:
            for mode in cfg["modes"]:
                for batch in cfg.get("compile_batch_sizes", cfg["batch_sizes"]):
                    for dtype in dtypes:
                        for path in cfg["paths"]:
                            if path == "fast" or args.compile_stock:
                                plan.append((mode, batch, dtype, path, True, False))
        # Interleaving (CPU default): the configurations of one (mode, batch) take turns, one timed step each, so
        # that load from other processes on a shared machine hits stock and fast alike.
        groups: list[list[tuple]] = []
        for entry in plan:
            mode, batch, _, _, compiled, _ = entry
            if (
                interleave
                and not compiled
                and groups
                and groups[-1][0][0] == mode
                and groups[-1][0][1] == batch
                and not groups[-1][0][4]
            ):
                groups[-1].append(entry)
            else:
                groups.append([entry])
        for group in groups:
            runners: list[Runner] = []
            for mode, batch, dtype, path, compiled, ckpt in group:
                res = Result(name, path, mode, dtype, batch, cfg["image_size"], compiled=compiled, checkpointing=ckpt)
                results.append(res)
                left = budget - (time.perf_counter() - started) if budget else None
                reserve = cfg.get("compile_reserve_per_block", 0.0) * model.config.num_hidden_layers if compiled else 0
                if left is not None and (left <= 0 or left < reserve):
                    res.error = "skipped (time budget)"
                    continue
                res.loadavg = loadavg()
                try:
                    r = Runner(model, res, device, args.compile_backend)
                    r.activate()
                    if not args.no_flops and model_flops.get((mode, batch, path, ckpt)) is None:
                        r.count_flops()
                        if res.exec_gflop_per_step is not None:
                            model_flops[(mode, batch, path, ckpt)] = res.exec_gflop_per_step
                    t0 = time.perf_counter()
                    r.warm(cfg["warmup"])
                    res.warmup_s = round(time.perf_counter() - t0, 1)
                    runners.append(r)
                except Exception as exc:  # keep going: one failing configuration should not lose the others
                    res.error = _error_text(exc)
                    _cleanup(device)
            for _ in range(cfg["iters"]):
                for r in list(runners):
                    try:
                        r.activate()
                        r.timed(1)
                    except Exception as exc:
                        r.res.error = _error_text(exc)
                        runners.remove(r)
                        _cleanup(device)
            for r in runners:
                res = r.res
                r.finish()
                if args.profile and res.path == "fast" and (not profile_models or name in profile_models):
                    r.activate()
                    key = f"{name} {res.path} {res.mode} {res.dtype} b{res.batch}{' compiled' if res.compiled else ''}"
                    profiles[key] = r.profile()
                    print(f"\n## profile: {key}\n{profiles[key]}", flush=True)
            for mode, batch, dtype, path, compiled, ckpt in group:
                res = next(
                    x
                    for x in results
                    if (x.model, x.mode, x.batch, x.dtype, x.path, x.compiled, x.checkpointing)
                    == (name, mode, batch, dtype, path, compiled, ckpt)
                )
                exec_g = model_flops.get((mode, batch, path, ckpt))
                if res.exec_gflop_per_step is None:
                    res.exec_gflop_per_step = exec_g
                stock = model_flops.get((mode, batch, "stock", False))
                if stock is None:  # stock skipped or out of memory at this batch: scale its batch-1 count
                    one = model_flops.get((mode, 1, "stock", False))
                    stock = one * batch if one is not None else None
                res.model_gflop_per_step = stock if stock is not None else exec_g
                if res.ms_per_step:
                    if res.model_gflop_per_step:
                        res.tflops = res.model_gflop_per_step / 1e3 / (res.ms_per_step / 1e3)
                    if exec_g:
                        res.exec_tflops = exec_g / 1e3 / (res.ms_per_step / 1e3)
                status = res.error or (
                    f"{res.ms_per_step:.1f} ms/step (min {res.ms_min:.1f}, cpu "
                    f"{res.cpu_s_per_step:.2f} s), {res.images_per_s:.2f} img/s"
                )
                print(
                    f"{name:6s} {path:5s} {mode:5s} {dtype:4s} b{batch} compile={compiled} ckpt={ckpt}: {status} "
                    f"warm-up {res.warmup_s} s, load={res.loadavg}, at {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            del runners
            _cleanup(device)
            write_json(final=False)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if phase_compiled:
            torch._dynamo.reset()

    elapsed = time.perf_counter() - started
    print()
    print(markdown_table(results))
    ratios = speedups(results)
    if ratios:
        print("\nSpeed-ups (median step time):")
        print("\n".join(ratios))
    print(
        f"\n(total {elapsed:.0f} s; TFLOP/s = stock-path FLOPs / time; peak mem: "
        f"{'cuda max_memory_allocated' if device.type == 'cuda' else 'peak RSS above the start of a timed step'})"
    )
    if args.json:
        write_json(final=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
