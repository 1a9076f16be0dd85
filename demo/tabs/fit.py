"""Fit (the note's part 3, maximum likelihood as minimum KL): a mixture of two Gaussians p → the single
Gaussian of maximum likelihood on N samples of p (forward KL, mode-covering) beside the argmin of
KL[q_θ ‖ p] (reverse KL, mode-seeking), both KLs of each and the constant E_p[log p]; and the served
models' held-out ELBO over training from their metrics.jsonl (API names `fit` and `fit_preset`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from .. import lecture as lec
from .. import lecture_plots, text
from .common import Models, Page, Tab, user_errors
from .divergence import SAMPLE_RANGE, mixture_sliders, reruns

LABEL = "Fit"
PRESETS = {  # (w₁, m₁, s₁, w₂, m₂, s₂) of p
    "two separated modes": (0.5, -2.0, 0.6, 0.5, 2.0, 0.6),
    "a big and a small mode": (0.75, -1.5, 0.7, 0.25, 2.5, 0.5),
    "two overlapping modes": (0.5, -0.8, 0.8, 0.5, 0.8, 0.8),
    "one Gaussian (both fits agree)": (1.0, 0.5, 1.2, 0.0, 0.0, 1.0),
}
DEFAULT_PRESET = "two separated modes"
MAX_METRICS_BYTES = 4 * 2**20  # a metrics.jsonl larger than this is not read (a long run's is ~1 MB)


def fit_numbers(p: lec.Mixture, samples: int, seed: int) -> dict:
    """Both fits (maximum likelihood on `samples` draws, and argmin KL[q_θ ‖ p]), the exact argmin of
    KL[p ‖ q_θ] (p's moments), E_p[log p], and the MLE's average and expected log-likelihood (nats)."""
    mle, avg_loglik = lec.fit_forward(p, samples, seed)
    moments = lec.Mixture.gaussian(p.mean, p.std)
    x = lec.grid_for(p, mle.q)

    def fit(f) -> dict:
        return {"mean": f.mean, "std": f.std, "forward_kl": f.forward_kl, "reverse_kl": f.reverse_kl}

    return {
        "samples": int(samples),
        "mle": fit(mle),
        "moments": fit(
            lec.GaussianFit(p.mean, p.std, lec.kl_quadrature(p, moments), lec.kl_quadrature(moments, p))
        ),
        "reverse": fit(lec.fit_reverse(p)),
        "neg_entropy": lec.neg_entropy(p, x),
        "avg_loglik": avg_loglik,
        "expected_loglik": lec.expectation(p, mle.q.log_pdf(x), x),
    }


def handlers(models: Models) -> dict[str, Callable]:
    @user_errors
    def fit(w1=0.5, m1=-2.0, s1=0.6, w2=0.5, m2=2.0, s2=0.6, samples=200, seed=0):
        """p (weights, means, scales of two components), N samples, a seed → the figure of both fits, the
        numbers as Markdown and as a dict (nats)."""
        p = lec.Mixture.of(w1, m1, s1, w2, m2, s2, name="p")
        n = fit_numbers(p, samples, seed)
        mle, rev = lec.Mixture.gaussian(n["mle"]["mean"], n["mle"]["std"]), n["reverse"]
        x = lec.grid_for(p, mle)
        draws = p.sample(int(samples), np.random.default_rng(int(seed)))
        figure = lecture_plots.fits_figure(
            x,
            p.log_pdf(x),
            (mle.log_pdf(x), "maximum likelihood = argmin KL[p ‖ q_θ]"),
            (lec.Mixture.gaussian(rev["mean"], rev["std"]).log_pdf(x), "argmin KL[q_θ ‖ p]"),
            samples=draws,
        )
        return figure, text.fit_table(n), n

    @user_errors
    def fit_preset(preset: str = DEFAULT_PRESET):
        """A preset's name → p's six slider values (w₁, m₁, s₁, w₂, m₂, s₂)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of: {', '.join(PRESETS)}; got {preset!r}")
        return PRESETS[preset]

    return {"fit": fit, "fit_preset": fit_preset}


def read_heldout(run: Path) -> tuple[list[int], list[float], str] | None:
    """(steps, held-out ELBO, split) from a run's metrics.jsonl (the `heldout_*` lines `--eval-every`
    writes); None when the file is missing, too large, or has no such lines. Bad lines are skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file() or path.stat().st_size > MAX_METRICS_BYTES:
        return None
    steps, elbo, split = [], [], "held-out"
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            step, value = int(record["step"]), float(record["heldout_elbo"])
        except (ValueError, TypeError, KeyError):
            continue
        if math.isfinite(value):
            steps.append(step)
            elbo.append(value)
            split = str(record.get("heldout_split") or split)
    return (steps, elbo, split) if steps else None


def learning_curves(models: Models):
    """The served models' held-out ELBO over training → (figure or None, caption)."""
    rungs = list(models.ladder.rungs)
    if models.posterior is not None and models.posterior is not models.ladder:
        rungs += models.posterior.rungs
    curves, missing, splits = [], [], set()
    for rung in rungs:
        name = f"{Path(rung.source).name} (β = {text.fmt_beta(rung.beta)})"
        found = read_heldout(Path(rung.source))
        if found is None:
            missing.append(name)
            continue
        curves.append((name, found[0], found[1]))
        splits.add(found[2])
    split = f"{splits.pop()}-split" if len(splits) == 1 else "held-out"
    figure = lecture_plots.training_figure(curves, split) if curves else None
    return figure, text.curves_caption([c[0] for c in curves], missing)


def layout(page: Page) -> Tab:
    with gr.Row(equal_height=False):
        preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="preset", elem_id="fit-preset")
        samples = gr.Slider(*SAMPLE_RANGE, value=200, step=10, label="N samples of p (the data)")
        seed = gr.Number(value=0, precision=0, label="seed (integer ≥ 0)", elem_id="fit-seed")
        button = gr.Button("Fit", variant="primary", elem_id="fit-button")
    gr.Markdown("**p** (orange): the mixture the N samples come from, the 'data distribution'")
    sliders = mixture_sliders("p", PRESETS[DEFAULT_PRESET], prefix="fit")
    figure = gr.Plot(label="the two fits", show_label=False, elem_id="fit-plot")
    table = gr.Markdown(elem_id="fit-numbers")
    with gr.Accordion("The numbers as JSON", open=False):
        numbers = gr.JSON(label="nats")
    curves, caption = learning_curves(page.models)
    gr.Plot(curves, label="held-out ELBO over training", show_label=False, visible=curves is not None)
    gr.Markdown(caption, elem_classes=["caption"], elem_id="fit-curves-caption")
    controls = [*sliders, samples, seed]
    tab = Tab(
        api_name="fit", fn=page.handlers.fit, inputs=controls, outputs=[figure, table, numbers], button=button
    )
    rerun, cleared = reruns(tab, page)
    preset.change(
        page.handlers.fit_preset, inputs=[preset], outputs=sliders, api_name="fit_preset", **page.model_events
    ).then(**rerun)
    # a slider let go or the seed entered: recompute (one event for all of them, so one queue entry)
    triggers = [c.release if isinstance(c, gr.Slider) else c.submit for c in controls]
    gr.on(triggers, **rerun).failure(**cleared)
    return tab
