#!/usr/bin/env bash
# GPU check (issue #9), one short script for a machine with a GPU:
#   1. the default run (mnist5k, IPC 10, K 20) on CUDA in fp32 and in fp16;
#   2. the throughput table of benchmarks/speed.py on the GPU;
#   3. the Ray engine with one GPU actor (a local Ray started for the run);
# and writes the figures to benchmarks/GPU.md with the card's name.
#
#   bash benchmarks/gpu_check.sh                 # full, on the GPU
#   bash benchmarks/gpu_check.sh --quick --out /tmp/GPU.md   # seconds; what tests/test_benchmarks.py runs
#
# Without CUDA it runs the same steps on the CPU (fp16 is skipped there) and says so in the file:
# the CPU fallback, which the tests run with --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=0
OUT=benchmarks/GPU.md
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False RAY_USAGE_STATS_ENABLED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
  CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
else
  DEVICE=cpu
  CARD="no GPU found: CPU fallback ($(nproc) cores)"
fi
SIZE=(--ipc 10 --k 20)
SPEED=()
if [ "$QUICK" = 1 ]; then
  SIZE=(--ipc 2 --k 2 --steps 2 --classes 0,1)
  SPEED=(--quick)
fi

ROWS=()
run() {  # run NAME ARGS...: one pipeline run, its wall time and anomaly counts
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$PY" -m curator run --data mnist5k "${SIZE[@]}" --out "$WORK/runs" --run-id "$name" --device "$DEVICE" "$@" \
    > "$WORK/$name.log" 2>&1 || { echo "run $name failed:"; tail -5 "$WORK/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  local all
  all=$(grep -E '^ +all ' "$WORK/$name.log" | tr -s ' ')
  ROWS+=("| $name | $("$PY" -c "print(round($t1 - $t0, 1))") | $all |")
}
run fp32 --dtype float32
if [ "$DEVICE" = cuda ]; then run fp16 --dtype float16; fi
run ray-1-actor --engine ray --ray-workers 1 --dtype float32

"$PY" -m benchmarks.speed --device "$DEVICE" "${SPEED[@]}" --out "$WORK/speed" > "$WORK/speed.log" 2>&1 \
  || { echo "speed benchmark failed:"; tail -5 "$WORK/speed.log"; exit 1; }

{
  echo "# GPU check"
  echo
  echo "\`bash benchmarks/gpu_check.sh $([ "$QUICK" = 1 ] && echo --quick)\` on **$CARD**, $(date '+%Y-%m-%d %H:%M')."
  echo
  echo "## Default run (\`run --data mnist5k ${SIZE[*]}\`), whole CLI process"
  echo
  echo "| run | wall s | all classes: images, mismatch, low conf, auto, accepted, overridden, kept original, dropped, unresolved, conf before/after, wall, status |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Throughput (benchmarks/speed.py)"
  echo
  sed -n '/^|/p' "$WORK/speed/SPEED.md"
} > "$OUT"
echo "wrote $OUT"
