"""`python -m train.curves RUN [RUN ...] --out curves.png`: the held-out curves of training runs, one line
per run, in one PNG (matplotlib).

Left: the held-out ELBO (nats/image, the `heldout_*` lines `--eval-every` writes to metrics.jsonl), with
the last 20 % of the longest run shaded — the window of the convergence check in each model card. Right:
the held-out KL[q(z|x) ‖ p(z)] (the rate). Runs are labelled by β when their βs differ, else by folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from vae_triton.io import atomic_path

from .report import heldout_trend, read_metrics


def load_curves(runs: list[Path]) -> list[tuple[str, list[dict]]]:
    """(label, held-out records) per run. Raises ValueError naming a run without held-out lines."""
    curves = []
    for run in runs:
        records = [r for r in read_metrics(run / "metrics.jsonl") if "heldout_elbo" in r]
        if not records:
            raise ValueError(
                f"{run / 'metrics.jsonl'} has no held-out lines: train with --eval-every N (and a data set "
                "with a test split) to record them"
            )
        curves.append((run, records))
    betas = [_beta(run) for run, _ in curves]
    by_beta = None not in betas and len(set(betas)) == len(betas)
    return [
        (f"β = {b:g}" if by_beta else run.name, records)
        for (run, records), b in zip(curves, betas, strict=True)
    ]


def _beta(run: Path) -> float | None:
    config = run / "run_config.json"
    return json.loads(config.read_text()).get("beta") if config.exists() else None


def curves_figure(curves: list[tuple[str, list[dict]]]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    elbo_ax, kl_ax = fig.subplots(1, 2)
    last = max(r[-1]["step"] for _, r in curves)
    for label, records in curves:
        steps = [r["step"] for r in records]
        trend = heldout_trend(records)
        suffix = f" (last 20 %: {trend['heldout_trend_change']:+.2f} nats)" if trend else ""
        elbo_ax.plot(steps, [r["heldout_elbo"] for r in records], marker=".", label=label + suffix)
        kl_ax.plot(steps, [r["heldout_kl"] for r in records], marker=".", label=label)
    elbo_ax.axvspan(0.8 * last, last, color="0.9", zorder=0)
    elbo_ax.set_title("held-out ELBO (shaded: the last 20 % of the steps)", fontsize=10)
    elbo_ax.set_ylabel("nats per image")
    kl_ax.set_title("held-out KL[q(z|x) ‖ p(z)] (rate)", fontsize=10)
    kl_ax.set_ylabel("nats per image")
    for ax in (elbo_ax, kl_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    elbo_ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories (what `python -m train --out` wrote)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        fig = curves_figure(load_curves(args.runs))
    except (ValueError, OSError) as e:
        print(f"python -m train.curves: error: {e}", file=sys.stderr)
        return 2
    try:
        with atomic_path(args.out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as e:  # a full disk: one line naming the file (vae_triton.io.DiskFullError)
        print(f"python -m train.curves: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
