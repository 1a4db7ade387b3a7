#!/usr/bin/env bash
# The GPU checks of issue 14 as one command (run from the repository root, with the venv active):
#   1. benchmarks/train_throughput.py on the device: FIGR sequential vs batched at T = 1, 8, 16, 32 (median of 3),
#      and the scaling section (plain loop, Ray Train 1 and 2 workers, 2 independent processes; 2-worker parts
#      need 2 GPUs on cuda);
#   2. compiled == eager: FIGR's batched inner step through torch.compile (Inductor on cuda, aot_eager on the CPU
#      unless --inductor) vs eager, the meta-gradient compared (float32 tolerance);
#   3. one `train figr` end to end (Ray Train + NCCL with --gpus-per-worker 1 on cuda, gloo on the CPU): 1 worker,
#      then 2 workers where there are 2 GPUs (on the CPU too: 2 gloo workers), MLflow on SQLite in a temp dir.
#
#   bash benchmarks/gpu.sh                  # device: cuda if torch sees one, else cpu
#   bash benchmarks/gpu.sh --device cpu     # the CPU check of this script (small sizes; a few minutes)
#   bash benchmarks/gpu.sh --device cuda --out DIR   # JSON and logs into DIR (default: a temp dir, printed)
#
# Every step prints PASS/SKIP (with the reason)/FAIL; the script exits 1 if any step failed, 0 otherwise.
# Needs: torch, ray[train], mlflow (the project's venv). Nothing is downloaded.
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=""
OUT=""
INDUCTOR=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --inductor) INDUCTOR=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1'; use --device cpu|cuda, --out DIR, --inductor" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
if [ -z "$DEVICE" ]; then
  DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
case "$DEVICE" in cpu|cuda) ;; *) echo "gpu.sh: --device must be cpu or cuda, got '$DEVICE'" >&2; exit 2 ;; esac
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [ "$DEVICE" = cuda ] && [ "$NGPU" -lt 1 ]; then
  echo "gpu.sh: --device cuda but torch sees no GPU; run with --device cpu" >&2; exit 2
fi
OUT="${OUT:-$(mktemp -d /tmp/fsig-gpu.XXXXXX)}"
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0
export RAY_TMPDIR="${RAY_TMPDIR:-$(mktemp -d /tmp/fsig-ray.XXXXXX)}"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
FAILED=0
step() { echo; echo "== $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"; }
result() {  # result NAME RC
  if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1 (exit $2; log in $OUT)"; FAILED=1; fi
}
echo "gpu.sh: device $DEVICE, $NGPU GPU(s) visible, $(nproc) CPUs, out $OUT"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

# 1. throughput -------------------------------------------------------------------------------------------
step "1. train_throughput on $DEVICE"
if [ "$DEVICE" = cuda ]; then
  BENCH=(--device cuda --ts 1,8,16,32 --width 16 --measure 20)
else
  # the CPU check of the script (every section runs; sizes too small for figures: 1 window, K=2, width 4)
  BENCH=(--device cpu --quick --ts 1,2 --width 4 --inner-steps 2 --warmup 1 --measure 2 --repeats 1)
fi
"$PY" benchmarks/train_throughput.py "${BENCH[@]}" --json >"$OUT/throughput.out" 2>"$OUT/throughput.err"
rc=$?
tail -n 1 "$OUT/throughput.out" >"$OUT/throughput.json"
grep -E "T=|tasks/s|ratio|efficiency|scaling|CPU over|operator group" "$OUT/throughput.err" || true
if [ $rc -eq 0 ]; then
  "$PY" - "$OUT/throughput.json" <<'EOF' || rc=$?
import json, sys
r = json.load(open(sys.argv[1]))
by_t = r["batched_figr"]["by_t"]
for t, row in by_t.items():
    print(f"   T={t}: batched / sequential = {row['speedup']:.2f}")
print("   batched_speedup_t8:", r["batched_speedup_t8"], " scaling_efficiency:", r["scaling_efficiency"],
      " (skipped: " + r["scaling_skipped"] + ")" if r.get("scaling_skipped") else "")
assert "batched_speedup_t8" in r and "scaling_efficiency" in r
EOF
fi
result "train_throughput (JSON: $OUT/throughput.json)" $rc

# 2. compiled == eager -------------------------------------------------------------------------------------
step "2. torch.compile of FIGR's batched inner step equals eager"
BACKEND=inductor
[ "$DEVICE" = cpu ] && [ "$INDUCTOR" = 0 ] && BACKEND=aot_eager
"$PY" - "$DEVICE" "$BACKEND" >"$OUT/compile.log" 2>&1 <<'EOF'
import sys, time, torch
import methods.figr as figr_mod
from methods.base import Task
from methods.figr import FIGR
device, backend = sys.argv[1], sys.argv[2]
figr_mod.COMPILE_BACKEND = backend
shape = (1, 32, 32)
g = torch.Generator().manual_seed(0)
tasks = [Task(torch.rand(4, *shape, generator=g) * 2 - 1, label=i, seed=10 + i) for i in range(4)]
cfg = {"width": 8, "inner_steps": 2, "task_batch": 2}
def meta_grad(m):
    grads = []
    m.meta_train_step(tasks, sync=lambda ps: grads.extend(p.grad.detach().float().cpu().clone() for p in ps))
    return grads
eager = meta_grad(FIGR(cfg, shape, device))
t = time.perf_counter()
comp = meta_grad(FIGR({**cfg, "compile": True}, shape, device))
scale = max(float(x.abs().max()) for x in eager)
diff = max(float((a - b).abs().max()) for a, b in zip(eager, comp))
print(f"backend {backend} on {device}: first compiled meta-step {time.perf_counter() - t:.1f} s; "
      f"max |eager - compiled| meta-gradient {diff:.3g} (scale {scale:.3g})")
assert diff < 1e-2 * scale, "compiled differs from eager beyond float32 tolerance"
EOF
rc=$?
cat "$OUT/compile.log" | tail -n 3
result "compile == eager ($BACKEND)" $rc

# 3. train end to end ----------------------------------------------------------------------------------------
SMALL=(--set width=8 --set val_generate=72 --set n_generate=40 --set eval_every=4 --set select_metric=last
       --set inner_steps=3 --set adapt_steps=3 --steps 4)
train() {  # train NAME WORKERS [extra args]
  local name=$1 workers=$2; shift 2
  "$PY" -m orchestrator train figr --tracking-uri "$MLFLOW_TRACKING_URI" --experiment gpu-sh --workers "$workers" \
     --set tasks_per_worker=1 "${SMALL[@]}" "$@" --json >"$OUT/$name.out" 2>"$OUT/$name.err"
  local rc=$?
  tail -n 1 "$OUT/$name.out" >"$OUT/$name.json"
  [ $rc -eq 0 ] && "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('   run', r.get('run_id'), 'fid_domain', r.get('fid_domain'))" "$OUT/$name.json"
  return $rc
}
if [ "$DEVICE" = cuda ]; then
  step "3a. train figr --gpus-per-worker 1, 1 worker (NCCL)"
  train train_1gpu 1 --gpus-per-worker 1; result "train figr --gpus-per-worker 1 --workers 1" $?
  if [ "$NGPU" -ge 2 ]; then
    step "3b. train figr --gpus-per-worker 1, 2 workers (NCCL all-reduce)"
    train train_2gpu 2 --gpus-per-worker 1; result "train figr --gpus-per-worker 1 --workers 2" $?
  else
    echo "SKIP 3b: 2 workers with NCCL need 2 GPUs; $NGPU visible"
  fi
else
  step "3a. train figr, 1 worker, CPU (gloo)"
  train train_1cpu 1; result "train figr --workers 1 (cpu)" $?
  echo "SKIP 3b (NCCL): --device cpu has no GPUs; the 2-worker NCCL run needs 2 GPUs (2 gloo workers: see 1's scaling)"
fi

echo
if [ $FAILED -eq 0 ]; then echo "gpu.sh: all steps passed ($OUT)"; else echo "gpu.sh: some steps FAILED ($OUT)"; fi
exit $FAILED
