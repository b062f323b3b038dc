#!/usr/bin/env bash
# Every GPU check and benchmark of this project in one run, for a machine with one CUDA GPU whose python3 already has
# torch (with CUDA), torchvision, transformers, accelerate and pytest. Packages it lacks can come as wheels in ./.whl
# (installed into /tmp/site, ahead of the machine's own). Run from the repository root:
#
#     OUT=gpu-out bash benchmarks/gpu_session.sh            # logs and JSON files land in $OUT
#
# Steps, in this order, each with its own time limit inside one overall deadline (GPU_SESSION_SECONDS, default 560),
# so that a slow step cannot starve the ones after it and a run cut short keeps every file written so far:
#   1. the machine: GPU, driver, package versions, and that losam_peft imports;
#   2. the CUDA tests (tests/test_cuda.py and the metrics accumulator on CUDA);
#   3. the attention kernels of one vit_b global layer on CUDA (benchmarks/attention_kernels.py --device cuda);
#   4. end-to-end predict against the raw batched forward on CUDA (benchmarks/predict_throughput.py);
#   5. the GPU benchmark table (benchmarks/bench.py --preset gpu) with whatever time is left.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${GPU_SESSION_SECONDS:-560}))
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

left() { echo $((DEADLINE - $(date +%s))); }
# step NAME MAX_SECONDS RESERVE_SECONDS COMMAND...: run COMMAND for at most MAX seconds, and never past the deadline
# minus RESERVE (the time kept for the steps after it); its output goes to $OUT/NAME.log and to the terminal.
step() {
  local name=$1 max=$2 reserve=$3
  shift 3
  local limit=$(($(left) - reserve))
  [ "$limit" -gt "$max" ] && limit=$max
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, $(left) s left" | tee -a "$OUT/steps.txt"
    return
  fi
  echo "== $name (limit ${limit} s, $(left) s left)"
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$OUT/$name.log"
  echo "== $name: exit $rc after $(($(date +%s) - t0)) s" | tee -a "$OUT/steps.txt"
}

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  # /tmp/site must come before the machine's site-packages, and it does: PYTHONPATH precedes them
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1
  nproc
  free -g | head -2
  "$PY" - <<'EOF'
import importlib
for name in ("torch", "torchvision", "transformers", "peft", "accelerate", "datasets", "evaluate", "triton", "numpy"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
import losam_peft
print("losam_peft", losam_peft.__version__, "imports")
EOF
} 2>&1 | tee "$OUT/machine.txt"

step tests 110 420 "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py \
  tests/test_metrics.py::test_accumulator_on_cuda_matches_cpu
step attention 50 370 "$PY" benchmarks/attention_kernels.py --device cuda --batch 4 --dtypes bf16 --flex --repeats 20
IMAGES_DIR=()
[ -d .drive ] && IMAGES_DIR=(--images-dir .drive)
step predict 60 310 "$PY" benchmarks/predict_throughput.py --encoder vit_b --images 200 --batch-size 8 \
  --device cuda --dtype bf16 --repeat 2 "${IMAGES_DIR[@]}" --json "$OUT/predict_throughput.json"
BUDGET=$(($(left) - 50))  # seconds for bench.py's own budget (the preset's is 480): it may overrun by one configuration
[ "$BUDGET" -gt 480 ] && BUDGET=480
step bench 100000 5 "$PY" benchmarks/bench.py --preset gpu --time-budget "$BUDGET" --profile --profile-models vit_b \
  --json "$OUT/bench_gpu.json"
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv >>"$OUT/machine.txt" 2>&1
cat "$OUT/steps.txt"
