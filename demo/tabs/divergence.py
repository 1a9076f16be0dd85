"""Divergence (the note's parts 1–2): two mixtures of two Gaussians p and q → their densities and the
integrand p·log(p/q), KL[p ‖ q] and KL[q ‖ p] by quadrature, a Monte-Carlo estimate of KL[p ‖ q] from N
samples of p with its standard error, and Jensen's picture of why KL ≥ 0 (API names `divergence` and
`divergence_preset`)."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from .. import lecture as lec
from .. import lecture_plots, text
from .common import Models, Page, Tab, user_errors

LABEL = "Divergence"
# (w₁, m₁, s₁, w₂, m₂, s₂) of p, then of q.
PRESETS = {
    "p = q": ((0.5, -1.5, 0.7, 0.5, 1.5, 0.7), (0.5, -1.5, 0.7, 0.5, 1.5, 0.7)),
    "two Gaussians, q shifted and wider": ((1.0, 0.0, 1.0, 0.0, 0.0, 1.0), (1.0, 1.0, 1.5, 0.0, 0.0, 1.0)),
    "two modes vs one wide Gaussian": ((0.5, -2.0, 0.6, 0.5, 2.0, 0.6), (1.0, 0.0, 2.1, 0.0, 0.0, 1.0)),
    "q misses one of p's modes": ((0.5, -2.0, 0.6, 0.5, 2.0, 0.6), (1.0, -2.0, 0.6, 0.0, 2.0, 0.6)),
    "q has a mode p lacks": ((0.7, -1.0, 0.8, 0.3, 2.5, 0.4), (0.4, -1.0, 0.8, 0.6, 3.5, 0.5)),
}
DEFAULT_PRESET = "two modes vs one wide Gaussian"
SAMPLE_RANGE = (10, 20_000)
LIMITS = {"w": (0.0, 1.0, 0.05), "m": (-5.0, 5.0, 0.1), "s": (0.0, 3.0, 0.05)}  # min, max, step
LABELS = {"w": "weight w", "m": "mean m", "s": "scale s"}


def divergence_numbers(p: lec.Mixture, q: lec.Mixture, n: int, seed: int):
    """Every number of the tab (nats): both KLs by quadrature, the Monte-Carlo estimate and its standard
    error, E_p[g] from the samples, and the closed form when p and q are single Gaussians; with the grid
    and the Monte-Carlo draws they come from."""
    x = lec.grid_for(p, q)
    mc = lec.kl_monte_carlo(p, q, n, seed)
    numbers = {
        "kl_pq": lec.kl_quadrature(p, q, x),
        "kl_qp": lec.kl_quadrature(q, p, x),
        "mc_kl_pq": mc.estimate,
        "mc_sem": mc.sem,
        "mc_samples": len(mc.g),
        "mean_g": mc.mean_g,
        "p_equals_q": p == q,
        "closed_form_kl_pq": None,
        "closed_form_kl_qp": None,
    }
    single = [_single(m) for m in (p, q)]
    if None not in single:
        (mp, sp), (mq, sq) = single
        numbers["closed_form_kl_pq"] = lec.gaussian_kl(mp, sp, mq, sq)
        numbers["closed_form_kl_qp"] = lec.gaussian_kl(mq, sq, mp, sp)
    return numbers, x, mc


def _single(m: lec.Mixture) -> tuple[float, float] | None:
    """(mean, scale) when the mixture is one Gaussian (one weight 0, or two equal components)."""
    (w1, w2), (m1, m2), (s1, s2) = m.weights, m.means, m.scales
    if w2 == 0 or (m1, s1) == (m2, s2):
        return m1, s1
    return (m2, s2) if w1 == 0 else None


def handlers(models: Models) -> dict[str, Callable]:
    @user_errors
    def divergence(
        p_w1=0.5, p_m1=-2.0, p_s1=0.6, p_w2=0.5, p_m2=2.0, p_s2=0.6,
        q_w1=1.0, q_m1=0.0, q_s1=2.1, q_w2=0.0, q_m2=0.0, q_s2=1.0,
        samples=1000, seed=0,
    ):  # fmt: skip
        """p and q (weights, means, scales of two components each), N samples of p, a seed → the density
        figure, Jensen's picture, the numbers as Markdown and as a dict (nats)."""
        p = lec.Mixture.of(p_w1, p_m1, p_s1, p_w2, p_m2, p_s2, name="p")
        q = lec.Mixture.of(q_w1, q_m1, q_s1, q_w2, q_m2, q_s2, name="q")
        numbers, x, mc = divergence_numbers(p, q, samples, seed)
        log_p, log_q = p.log_pdf(x), q.log_pdf(x)
        return (
            lecture_plots.densities_figure(x, log_p, log_q, numbers["kl_pq"]),
            lecture_plots.jensen_figure(mc.g, mc.f_g, numbers["kl_pq"]),
            text.divergence_table(numbers),
            numbers,
        )

    @user_errors
    def divergence_preset(preset: str = DEFAULT_PRESET):
        """A preset's name → the twelve slider values (p's w₁, m₁, s₁, w₂, m₂, s₂, then q's)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of: {', '.join(PRESETS)}; got {preset!r}")
        p, q = PRESETS[preset]
        return (*p, *q)

    return {"divergence": divergence, "divergence_preset": divergence_preset}


def mixture_sliders(name: str, values: tuple, prefix: str = "div") -> list[gr.Slider]:
    """Six sliders (w, m, s of two components) for the mixture `name`, in two rows, one per component.
    Scales and weights go down to 0, so a 0 reaches the handler's message rather than Gradio's."""
    sliders = []
    for k in (1, 2):
        with gr.Row():
            for key in ("w", "m", "s"):
                lo, hi, step = LIMITS[key]
                sliders.append(
                    gr.Slider(
                        lo,
                        hi,
                        value=values[len(sliders)],
                        step=step,
                        label=f"{LABELS[key]}{'₁₂'[k - 1]}",
                        min_width=120,
                        elem_id=f"{prefix}-{name}-{key}{k}",
                    )
                )
    return sliders


def layout(page: Page) -> Tab:
    p_values, q_values = PRESETS[DEFAULT_PRESET]
    with gr.Row(equal_height=False):
        preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="preset", elem_id="div-preset")
        samples = gr.Slider(*SAMPLE_RANGE, value=1000, step=10, label="N samples of p")
        seed = gr.Number(value=0, precision=0, label="seed (integer ≥ 0)", elem_id="div-seed")
        button = gr.Button("Compute", variant="primary", elem_id="div-button")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            gr.Markdown("**p** (orange): the distribution we sample from")
            p_sliders = mixture_sliders("p", p_values)
        with gr.Column(min_width=300):
            gr.Markdown("**q** (blue, dashed): the model of p")
            q_sliders = mixture_sliders("q", q_values)
    numbers_md = gr.Markdown(elem_id="div-numbers")
    with gr.Row(equal_height=False):  # side by side on a desktop, one under the other on a phone
        with gr.Column(min_width=420):
            densities = gr.Plot(label="p, q and p·log(p/q)", show_label=False, elem_id="div-densities")
        with gr.Column(min_width=420):
            jensen = gr.Plot(label="Jensen's inequality", show_label=False, elem_id="div-jensen")
    gr.Markdown(text.PROPOSITIONS, latex_delimiters=text.LATEX, elem_classes=["caption"], elem_id="div-props")
    with gr.Accordion("The numbers as JSON", open=False):
        numbers = gr.JSON(label="nats")
    controls = [*p_sliders, *q_sliders, samples, seed]
    tab = Tab(
        api_name="divergence",
        fn=page.handlers.divergence,
        inputs=controls,
        outputs=[densities, jensen, numbers_md, numbers],
        button=button,
    )
    rerun, cleared = reruns(tab, page)
    preset.change(
        page.handlers.divergence_preset,
        inputs=[preset],
        outputs=[*p_sliders, *q_sliders],
        api_name="divergence_preset",
        **page.model_events,
    ).then(**rerun)
    # a slider let go or the seed entered: recompute (one event for all of them, so one queue entry)
    triggers = [c.release if isinstance(c, gr.Slider) else c.submit for c in controls]
    gr.on(triggers, **rerun).failure(**cleared)
    return tab


def reruns(tab: Tab, page: Page) -> tuple[dict, dict]:
    """The tab's event re-run from its controls (private), and what clears its outputs after a failure
    (the toast has said why; nothing stale stays)."""

    def again(*args):  # its own name: Gradio names private events too, and the button's must stay /<api_name>
        return tab.fn(*args)

    again.__name__ = f"{tab.api_name}_again"
    rerun = dict(fn=again, inputs=tab.inputs, outputs=tab.outputs, api_visibility="private")
    none = [None] * len(tab.outputs)
    cleared = dict(fn=lambda: none, inputs=None, outputs=tab.outputs, api_visibility="private")
    return {**rerun, **page.model_events}, {**cleared, **page.model_events}
