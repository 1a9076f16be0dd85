"""First run on an empty cache: the wall time of `python -m train --steps 20` (dSprites, the default),
imports included, in a fresh process with a fresh, empty cache folder and output folder.

Prints and writes (with --out) the median of --repeat runs, every run's time, the cache folder's size
afterwards, the machine (CPU count, load average before each run: say when it was shared), and the
command. The target: ≤ 60 s on an idle 2-core CPU.

    python -m bench.bench_first_run [--repeat 3] [--out DIR] [-- extra train flags]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def one_run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "run"
        cache.mkdir()
        cmd = [sys.executable, "-m", "train", "--steps", "20", "--out", str(out), *extra]
        env = {**os.environ, "VAE_TRITON_CACHE": str(cache)}  # the default cache location, empty
        load = os.getloadavg()[0]
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        return {
            "wall_s": round(wall, 2),
            "load_avg_1min_before": round(load, 2),
            "cache_bytes": folder_bytes(cache),
            "out_bytes": folder_bytes(out),
            "command": " ".join(["python -m train --steps 20 --out RUN", *extra]) + ", empty cache",
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None, help="write bench_first_run.json here")
    p.add_argument("extra", nargs="*", help="extra flags for python -m train (after --)")
    args = p.parse_args(argv)
    runs = [one_run(args.extra) for _ in range(args.repeat)]
    result = {
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "target_s": 60,
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_first_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
