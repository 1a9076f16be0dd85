#!/usr/bin/env bash
# The one command a contributor with a GPU runs: the GPU tests (pytest -m gpu), the ops benchmark and the
# training-step benchmark, in under 8 minutes on one GPU, everything written under DIR.
#
#   bash bench/run_gpu.sh DIR              # one CUDA GPU (CUDA_VISIBLE_DEVICES picks which)
#   bash bench/run_gpu.sh --dry-run [DIR]  # no GPU, seconds: prints each step and checks it (the tests
#                                          # collect, each command's module imports and parses its flags)
#   bash bench/run_gpu.sh --cpu DIR        # no GPU, minutes: the same steps run at CPU sizes
#
# DIR defaults to runs/run_gpu. The steps need only torch, triton, numpy, scipy, pytest, pillow,
# safetensors, tqdm and einops (what a GPU machine often has): test modules that need the app's or the
# data's packages are skipped at collection (tests/conftest.py), and tests/test_optional_imports.py checks
# that --dry-run passes with those packages hidden.
#
# DIR/summary.txt   one line per step: name, exit code, seconds (a step cut by its time limit: rc 124)
# DIR/env.txt       device, driver, torch / triton versions, git commit
# DIR/<step>.log    each step's full output
# DIR/ops-*/        bench_ops.csv/.json (B=1024: 3×128² fp32, 3×64² bf16, and the model's loss as celeba64
#                   trains it: logits, σ per channel, channels_last, bf16 3×64²)
# DIR/ops-iw/      bench_iw.csv/.json: reparameterize_iw (the IW bound's latent step, K = 5 and 50, D = 16 and
#                   128, B = 128 and 1024, fp32 and bf16) beside eager torch and torch.compile
# DIR/host/         host_overhead.csv/.json (this machine's CPU cost per op call, launches stubbed)
# DIR/train/        bench_train.json/.csv and profiler tables (B=256: baseline, cli = what `python -m train`
#                   runs, cli-compile, default = --no-cuda-graph, step-graph; as many as its time limit allows)
# DIR/dsprites-cli/ a real `python -m train --dataset dsprites` run with the CLI defaults (img/s in its log)
#
# Every step has its own time limit, cut to what is left of the total budget (RUN_GPU_BUDGET seconds,
# default 475), so the whole run stays under 8 minutes; a step that fails does not stop the others.
set -uo pipefail

usage() { echo "usage: bash bench/run_gpu.sh [--dry-run | --cpu] [DIR]" >&2; exit 2; }
DIR=
MODE=gpu  # gpu: the real run; cpu: the same steps at CPU sizes; dry: print and check each step
for arg in "$@"; do
  case $arg in
    --dry-run) MODE=dry ;;
    --cpu) MODE=cpu ;;
    -*) usage ;;
    *) [[ -z $DIR ]] || usage; DIR=$arg ;;
  esac
done
DIR=${DIR:-runs/run_gpu}
if [[ -e $DIR && ! -d $DIR ]]; then echo "run_gpu.sh: $DIR exists and is not a folder" >&2; exit 2; fi
PY=${PYTHON:-python}
BUDGET=${RUN_GPU_BUDGET:-475}
START=$SECONDS
if [[ $MODE == gpu ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu.sh: no CUDA GPU here; --dry-run checks the steps, --cpu runs them at CPU sizes" >&2
  exit 2
fi
mkdir -p "$DIR" || { echo "run_gpu.sh: cannot create $DIR" >&2; exit 2; }
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.." || exit 2
: > "$DIR/summary.txt"
unset TRITON_INTERPRET  # benchmarks must time the compiled kernels, never the interpreter

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | head -c 1 | sed 's/./(dirty)/')"
  "$PY" -c "import torch, triton, platform; print('torch', torch.__version__, '| triton', triton.__version__, '| python', platform.python_version()); print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only (dry run)')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"

# A dry run's stand-in for COMMAND: pytest only collects; `python -m MODULE ARGS` imports MODULE as the
# run would and parses ARGS with its parse_args (`python -m train` parses with train.config's).
PARSE='import importlib, sys
module = importlib.import_module(sys.argv[1] + ".config" if sys.argv[1] == "train" else sys.argv[1])
module.parse_args(sys.argv[2:])
print(sys.argv[1], "imports and parses its flags")'
dry_command() {
  local words=("$@") i
  for ((i = 0; i < ${#words[@]} - 1; i++)); do
    [[ ${words[i]} == "$PY" && ${words[i + 1]} == -m ]] || continue
    if [[ ${words[i + 2]} == pytest ]]; then
      printf '%q ' "${words[@]}" --collect-only
    else
      printf '%q ' "${words[@]:0:i+1}" -c "$PARSE" "${words[@]:i+2}"
    fi
    return
  done
  echo "run_gpu.sh: no '$PY -m MODULE' in: $*" >&2
  return 1
}

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit cut to the budget left, log to DIR/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  if [[ $MODE == dry ]]; then
    echo "== $name: $*"
    local check
    check=$(dry_command "$@") || { echo "$name rc=2 0s" >> "$DIR/summary.txt"; return; }
    eval "$check" > "$DIR/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc (dry run: checked, not run)" | tee -a "$DIR/summary.txt"
    tail -n 2 "$DIR/$name.log"
    return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "$name skipped: out of time" | tee -a "$DIR/summary.txt"
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$DIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$DIR/summary.txt"
  tail -n 4 "$DIR/$name.log"
}

if [[ $MODE == gpu || $MODE == dry ]]; then
  OPS=(--batch 1024)
  IW=(--batch 128 1024 --dtype float32 bfloat16)
  # the reference baseline, the CLI's step, our default eager step, the whole step in one CUDA graph
  TRAIN=(--batch-sizes 256 --configs baseline cli cli-compile default step-graph --skip-eval --time-limit 110)
  CLI=(--steps 3000)
else  # CPU sizes: the same steps and flags shape, seconds each
  OPS=(--device cpu --batch 4 --reps 2)
  IW=(--device cpu --batch 4 --reps 2 --dtype float32)
  TRAIN=(--device cpu --quick --batch-sizes 4 --configs baseline cli --skip-eval --time-limit 30)
  CLI=(--steps 4 --batch-size 8 --eval-images 16 --preset small --resolution 64)
fi

step pytest-gpu 130 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/
step ops-fp32-128 90 "$PY" -m bench.bench_ops "${OPS[@]}" --size 128 --dtype float32 --out "$DIR/ops-fp32-128"
step ops-bf16-64 80 "$PY" -m bench.bench_ops "${OPS[@]}" --size 64 --dtype bfloat16 --out "$DIR/ops-bf16-64"
step ops-logits-bf16-64 45 "$PY" -m bench.bench_ops "${OPS[@]}" --size 64 --dtype bfloat16 --logits --no-compile \
  --sigma channel --channels-last \
  --out "$DIR/ops-logits-bf16-64"
step ops-iw 60 "$PY" -m bench.bench_ops --iw 5 50 --latent 16 128 "${IW[@]}" --out "$DIR/ops-iw"
step host-overhead 30 "$PY" -m bench.bench_ops --host-overhead --reps 5 --out "$DIR/host"
step train 140 "$PY" -m bench.bench_train "${TRAIN[@]}" --out "$DIR/train"
# What a user gets: a real `python -m train` dSprites run with the CLI's defaults (B=256 and the CUDA graph
# on CUDA); its final block prints the median img/s (the goal: ≥ 50k img/s on an H200).
step dsprites-cli 60 env VAE_TRITON_CACHE="$DIR/cache" "$PY" -m train --dataset dsprites "${CLI[@]}" \
  --out "$DIR/dsprites-cli" --no-progress

echo "total $((SECONDS - START))s (budget ${BUDGET}s)" | tee -a "$DIR/summary.txt"
if [[ $MODE == gpu ]]; then
  echo "results under $DIR; paste the tables from $DIR/*.log into BENCHMARKS.md with the device from env.txt"
fi
! grep -q "rc=[1-9]" "$DIR/summary.txt"
