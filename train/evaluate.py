"""`python -m train.evaluate --checkpoint DIR`: the full evaluation of a saved model.

On the first `--num-images` images of a split: reconstruction NLL, KL, ELBO, the importance-weighted
log-likelihood with K = `--iw-samples`, the gap IW − ELBO (≈ KL[q(z|x) ‖ p(z|x)]), bits/dim, MSE, PSNR.
On the first `--latent-images` images (the encoder only, so cheap): KL per latent dimension, active units,
and MIG when the dataset has ground-truth factors (dsprites). Prints a table, then writes `eval.json`
next to the checkpoint (atomically): a failed write (a full disk) loses no result.

`eval.json` is strict JSON: a value the data cannot define (a standard error of one image) is `null`,
and the report's "undefined" object says why, e.g. {"metrics.kl_sem": "a standard error needs at least
2 images (--num-images 1)"}.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from train.datasets import DATASETS
from train.flags import OneDefaultHelpFormatter, switch
from train.paths import check_not_model_file, check_output_file
from train.threads import BatchTicks, model_check, thread_controller
from vae_triton.io import write_json_atomic

DEFAULTS = {
    "split": "test",
    "iw_samples": 1000,
    "num_images": 1000,
    "latent_images": 10_000,
    "batch_size": 16,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a saved VAE: ELBO, importance-weighted log-likelihood, gap, bits/dim, "
        "active units and MIG. All likelihoods are per-image sums in nats.",
        formatter_class=OneDefaultHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="a directory written by VAE.save_pretrained (model.safetensors + config.json), or a Hub id",
    )
    p.add_argument(
        "--dataset",
        default=None,
        choices=tuple(DATASETS),
        help="default: the run's dataset (its run_config.json, else the model's metadata)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="local data (`folder`; a local CelebA copy). Default: the run's, from the run_config.json "
        "that `python -m train` saved next to the model (or one folder up, for OUT/best)",
    )
    p.add_argument("--cache-dir", default=None, help="where decoded uint8 image caches live")
    p.add_argument("--split", default=DEFAULTS["split"], help="dataset split to evaluate (default: test)")
    p.add_argument(
        "--iw-samples",
        type=int,
        default=DEFAULTS["iw_samples"],
        metavar="K",
        help="importance samples per image for the IW bound; 0 = ELBO only (default: 1000)",
    )
    p.add_argument(
        "--iw-chunk",
        type=int,
        default=None,
        help="importance samples decoded per pass for each image (default: 1024 // batch size)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=DEFAULTS["num_images"],
        metavar="N",
        help="images for the likelihood metrics, the first N of the split (default: 1000)",
    )
    p.add_argument(
        "--latent-images",
        type=int,
        default=DEFAULTS["latent_images"],
        metavar="M",
        help="images for active units, KL per dim and MIG (encoder only; default: 10000)",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="images per IW pass")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    switch(p, "channels-last", True, "NHWC layout for the convolutions (same numbers; ~1.8x faster on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling noise (results are reproducible)")
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch CPU threads, fixed. Default: adaptive on a CPU — start at the cores not busy now, "
        "round(cores − 1-min load average), then between batches follow the measured speed, so a process "
        "that starts or stops on the same cores is seen (2 spinning threads ran 3–50× slower than 1 beside a "
        "busy neighbour on a 2-core machine; train/threads.py)",
    )
    p.add_argument(
        "--output",
        default=None,
        help="where to write the JSON (default: DIR/eval.json; for a model bundled in demo/models, "
        "runs/evaluate/<its path>/eval.json, so the tracked file changes only when named here)",
    )
    switch(p, "progress", True, "progress bars (evaluation and cache building)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    positive = {
        "num_images": "--num-images",
        "latent_images": "--latent-images",
        "batch_size": "--batch-size",
    }
    for name, flag in positive.items():
        if getattr(args, name) < 1:
            raise ValueError(f"{flag} must be a positive number, got {getattr(args, name)}")
    if args.iw_samples < 0:
        raise ValueError(f"--iw-samples must be 0 (ELBO only) or a positive K, got {args.iw_samples}")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num-threads must be a positive number of CPU threads, got {args.num_threads}")
    if args.iw_chunk is not None and args.iw_chunk < 1:
        raise ValueError(f"--iw-chunk must be a positive number of samples, got {args.iw_chunk}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here; use --device cpu")
    return device


def load_model(checkpoint: str, device: torch.device):
    from vae_triton.model import CONFIG_NAME, VAE, WEIGHTS_NAME

    folder = Path(checkpoint)
    if folder.is_dir() and not (folder / WEIGHTS_NAME).is_file() and (folder / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{folder} holds trainer checkpoints but no {WEIGHTS_NAME}/{CONFIG_NAME} yet: the run is "
            f"unfinished. Let it finish (or stop it with Ctrl-C, which saves the model) and evaluate again"
        )
    return VAE.from_pretrained(checkpoint, map_location=device)


def saved_run_config(checkpoint: str) -> dict:
    """The run_config.json `python -m train` saved with this model ({} for a Hub id or a bare model)."""
    folder = Path(checkpoint)
    for candidate in (folder / "run_config.json", folder.parent / "run_config.json"):
        if folder.is_dir() and candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError:
                return {}
    return {}


def load_data(args: argparse.Namespace, model):
    """The first max(N, M) images of the split, checked against the model's image shape. Data flags
    not given default to the run's own (its saved run_config.json), so `--checkpoint RUN` alone finds
    the run's test split."""
    from train.data import dataset_for_split

    run = saved_run_config(args.checkpoint)
    same_data = args.dataset is None or args.dataset == run.get("dataset")
    name = args.dataset or run.get("dataset") or model.metadata.get("dataset")
    if not name:
        raise ValueError("the model's metadata does not say which dataset it was trained on: pass --dataset")
    cfg = model.config
    expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
    shape = DATASETS[name].fixed_shape if name in DATASETS else None
    if shape is not None and expected != shape:
        raise ValueError(f"{name} images are {shape} but the model takes {expected}: pick its dataset")
    # The run's own data rule (folder, split rule, binarization, cache) unless a flag says otherwise;
    # the model fixes the image shape.
    data = {**(run if same_data else {}), "dataset": name}
    data.update({k: v for k, v in (("data_dir", args.data_dir), ("cache_dir", args.cache_dir)) if v})
    data.update(resolution=cfg.image_size, channels=str(cfg.image_channels))
    limit = max(args.num_images, args.latent_images)
    ds = dataset_for_split(data, args.split, limit=limit, progress=args.progress)  # --no-progress: no bars
    if tuple(ds.image_shape) != expected:
        raise ValueError(
            f"{name}/{args.split} images are {tuple(ds.image_shape)} but the model takes {expected}"
        )
    return name, ds


def evaluate(args: argparse.Namespace, argv: list[str]) -> dict:
    from vae_triton import metrics

    device = resolve_device(args.device)
    threads = thread_controller(args.num_threads, device)
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    model = load_model(args.checkpoint, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    name, ds = load_data(args, model)
    n, m = min(args.num_images, len(ds)), min(args.latent_images, len(ds))
    # Adapt only where the count cannot change the reported numbers.
    threads.require_exact(model_check(model, (args.batch_size, *ds.image_shape), backward=False))

    start = time.perf_counter()
    result = metrics.likelihood_metrics(
        model,
        # As training saw them (binarized when the run binarized); each batch times the thread count.
        BatchTicks(ds.uint8(range(n)), threads),
        iw_samples=args.iw_samples,
        iw_chunk=args.iw_chunk,
        batch_size=args.batch_size,
        generator=generator,
        progress=args.progress,
    )
    mu, logvar = metrics.encode_images(model, ds.uint8(range(m)), batch_size=256, progress=args.progress)
    factors = None if ds.factors is None else ds.factors[:m]
    result.update(
        metrics.latent_metrics(
            mu, logvar, factors, factor_names=ds.factor_names or None, logvar_clamp=model.config.logvar_clamp
        )
    )
    elapsed = time.perf_counter() - start
    return {
        "checkpoint": str(args.checkpoint),
        "dataset": name,
        "split": args.split,
        "model": {
            "likelihood": model.config.likelihood,
            "latent_dim": model.config.latent_dim,
            **{k: model.metadata[k] for k in ("beta", "steps", "preset") if k in model.metadata},
        },
        "settings": {
            "iw_samples": args.iw_samples,
            "iw_chunk": args.iw_chunk,
            "num_images": n,
            "latent_images": m,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": str(device),
        },
        "num_threads": threads.threads,  # at the end
        "num_threads_adaptive": threads.adapt,
        "conventions": {
            "units": "nats per image: sums over the C·H·W pixels (no per-pixel means), means over images; "
            "*_sem are standard errors of those means",
            "bpd": result.get("bpd_convention"),
            "gap": "iw_log_likelihood − elbo, on the same K samples: an estimate of KL[q(z|x) ‖ p(z|x)]",
            "active_units": f"Var_x(E_q[z_d|x]) > {metrics.ACTIVE_UNIT_THRESHOLD:g} (Burda et al. 2016)",
            "mig": "Chen et al. 2018 on posterior means, 20 equal-width bins per latent",
        },
        "metrics": result,
        "elapsed_s": round(elapsed, 2),
        "command": "python -m train.evaluate " + shlex.join(argv),
    }


def _num(v: float, digits: int = 3) -> str:
    return f"{v:,.{digits}f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def headline(report: dict) -> str:
    """The number papers compare, first: −log p(x) in nats per image (an upper bound from the IW bound,
    or from the ELBO when K = 0), with D = C·H·W of the data."""
    r, k = report["metrics"], report["settings"]["iw_samples"]
    bound, how = (r["elbo"], "ELBO")
    if "iw_log_likelihood" in r:
        bound, how = r["iw_log_likelihood"], f"IW bound, K={k}"
    bpd = r.get("bpd_iw", r.get("bpd_elbo"))
    per_dim = f", {bpd:.4f} bits/dim" if bpd is not None else ""
    return (
        f"NLL on {report['split']}: {-bound:.2f} nats per image (−{how}; D = {r['num_dims']} pixels{per_dim})"
    )


def format_table(report: dict) -> str:
    r = report["metrics"]
    s = report["settings"]
    k = s["iw_samples"]
    rows = [
        ("−log p(x|z)  reconstruction", r["recon_nll"], r["recon_nll_sem"], "nats"),
        ("KL[q(z|x) ‖ p(z)]", r["kl"], r["kl_sem"], "nats"),
        ("ELBO", r["elbo"], r["elbo_sem"], "nats"),
    ]
    if "iw_log_likelihood" in r:
        rows += [
            (f"log p(x) ≥ IW bound (K={k})", r["iw_log_likelihood"], r["iw_log_likelihood_sem"], "nats"),
            ("gap IW − ELBO ≈ KL[q ‖ p(z|x)]", r["gap"], r["gap_sem"], "nats"),
        ]
    for key, label in (("bpd_iw", f"bits/dim (IW, K={k})"), ("bpd_elbo", "bits/dim (ELBO)")):
        if key in r:
            rows.append((label, r[key], None, "bits"))
    if "mse" in r:
        rows += [("MSE of reconstruction (μ)", r["mse"], None, "per pixel"), ("PSNR", r["psnr"], None, "dB")]
    lines = [
        f"{report['checkpoint']}: {report['dataset']}/{report['split']}, {s['num_images']} images "
        f"(latents: {s['latent_images']}), seed {s['seed']}, {s['device']}",
        f"{'metric':<34}{'value':>14}{'± s.e.':>10}  unit",
    ]
    lines.insert(1, headline(report))
    for label, value, sem, unit in rows:
        lines.append(f"{label:<34}{_num(value, 4):>14}{_num(sem, 4) if sem is not None else '':>10}  {unit}")
    active = f"active units (Var_x E_q[z] > {r['active_unit_threshold']:g})"
    lines.append(f"{active:<34}{r['active_units']:>14} / {r['latent_dim']}")
    if "mig" in r:
        lines.append(f"{'MIG (20 bins)':<34}{_num(r['mig'], 4):>14}")
        per = ", ".join(f"{n} {'n/a' if v is None else f'{v:.3f}'}" for n, v in r["mig_per_factor"].items())
        lines.append(f"  per factor: {per}")
    lines.append("  KL per dim (nats): " + " ".join(f"{v:.2f}" for v in r["kl_per_dim"]))
    lines.append(f"Convention: per-image sums in nats; {r['bpd_convention']}")
    return "\n".join(lines)


BUNDLED = Path(__file__).resolve().parents[1] / "demo" / "models"


def output_path(args: argparse.Namespace) -> Path | str:
    """--output, else eval.json next to the checkpoint; a bundled model's tracked eval.json is rewritten
    only when --output names it."""
    if args.output is not None:
        return args.output  # check_output_file refuses an empty one
    folder = Path(args.checkpoint)
    if not folder.is_dir():
        return Path("eval.json")
    if folder.resolve().is_relative_to(BUNDLED):
        return Path("runs", "evaluate", folder.resolve().relative_to(BUNDLED), "eval.json")
    return folder / "eval.json"


def strict_json(report: dict) -> dict:
    """`report` with every non-finite float replaced by None, and an "undefined" object naming each such
    value ("metrics.kl_sem") with the reason. JSON has no NaN or Infinity: `json.dumps` would write bare
    `NaN` tokens that strict parsers (browsers, jq, Python's with parse_constant) reject."""
    undefined: dict[str, str] = {}
    n = report.get("settings", {}).get("num_images")

    def why(key: str) -> str:
        if key.endswith("_sem") and n is not None and n < 2:
            return f"a standard error needs at least 2 images (--num-images {n})"
        return "not finite (NaN or ±inf) for these images and weights"

    def clean(value, where: str):
        if isinstance(value, float) and not math.isfinite(value):
            undefined[where] = why(where.rsplit(".", 1)[-1])
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(report, "")
    if undefined:
        cleaned["undefined"] = undefined
    return cleaned


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from train.data import DataUnavailableError

    try:
        args = parse_args(argv)
    except ValueError as e:
        build_parser().error(str(e))  # exits 2 with usage
    try:
        path = check_output_file(output_path(args))  # before the metrics: a bad path fails in a second
        check_not_model_file(path, args.checkpoint)
        report = evaluate(args, argv)
    except KeyboardInterrupt:
        return 130
    except (DataUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report), flush=True)  # first: a failed write must not lose minutes of metrics
    try:
        write_json_atomic(path, strict_json(report), indent=2, allow_nan=False)  # old file or new one
    except OSError as e:  # a full disk (one line naming the file, vae_triton.io.DiskFullError), permissions
        print(f"error: the results above were not saved: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
