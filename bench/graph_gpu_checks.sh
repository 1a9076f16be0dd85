#!/usr/bin/env bash
# Issue 10's GPU checks, in one go on one CUDA machine (about 6-8 minutes on an H200; each part keeps going
# if an earlier one fails). Writes everything under $OUT (default /tmp/graph-gpu):
#   1. pytest_gpu.txt  — the capture itself: graphed == eager bitwise (fp32 and bf16, deterministic cuDNN),
#                        a CLI run graphed vs --no-cuda-graph (same losses, β/lr still scheduled), compile
#                        then capture (captured, or a clear fallback line), dSprites batches GPU == CPU.
#   2. train-graph/    — bench_train at B=256: baseline, cli (= python -m train), cli-compile, default
#                        (--no-cuda-graph), step-graph. Goals: cli ≥ 4× baseline, ≥ 120k img/s, epoch ≤ 1.5 s.
#   3. dsprites/       — a real `python -m train --dataset dsprites` run (CLI defaults: B=256, CUDA graph);
#                        goal: ≥ 50k img/s (median of the logged windows, printed at the end).
set -u
OUT=${OUT:-/tmp/graph-gpu}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export VAE_TRITON_CACHE=${VAE_TRITON_CACHE:-$OUT/cache}

python -m pytest -q -m gpu tests/test_step_graph.py 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -25

python -m bench.bench_train --batch-sizes 256 --configs baseline cli cli-compile default step-graph \
    --skip-eval --time-limit 300 --out "$OUT/train-graph" 2>&1 | grep -v '^B=256:.*it/s' | tail -30

python -m train --dataset dsprites --steps 3000 --out "$OUT/dsprites" --no-progress \
    > "$OUT/dsprites.txt" 2>&1
tail -15 "$OUT/dsprites.txt"
python - "$OUT/dsprites/metrics.jsonl" <<'EOF'
import json, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rates = [r["img_per_s"] for r in rows if "img_per_s" in r and not r.get("final")]
print(f"dsprites CLI run: median {statistics.median(rates):.0f} img/s over {len(rates)} windows (goal ≥ 50k)")
EOF
