"""The Gradio page: a β slider, the selected model's card and the rate–distortion plane, then the tabs of
`TABS` (divergence, fit, posterior, reconstruct, sample, interpolate, traverse: the lecture note's
order), each in its own module under `demo/tabs/` and opened by the one formula it shows, whose
public events carry the tabs' API names.

`make_handlers(ladder)` gives the plain functions behind the events (tested without a server);
`build_demo(ladder)` lays out the page and wires every tab in one loop; `launch_kwargs()` holds what
`launch()` needs (CSS, upload cap).

Every event with a backend function is queued under one concurrency id, so no client can run more
than CONCURRENCY_LIMIT computations at once through any event, public or internal (`serve` also closes
the queue-skipping REST routes).
"""

from __future__ import annotations

import functools
import math
import types
from pathlib import Path

import gradio as gr

from . import inference as inf
from . import outputs, plots, text
from .tabs import divergence, fit, interpolate, posterior, reconstruct, sample, traverse
from .tabs.common import Models, Page, Tab, example_paths, user_error

# Page order = the lecture note's: divergence and Jensen (parts 1–2), maximum likelihood (3), the posterior
# and the ELBO (4), then the VAE's encoder and decoder at work (5).
TABS = [divergence, fit, posterior, reconstruct, sample, interpolate, traverse]

MAX_FILE_SIZE = "10mb"  # uploads above this are refused by the server before any decoding
CONCURRENCY_LIMIT = 2  # computations at once, over all events (they share one concurrency id)
QUEUE_SIZE = 32
MODEL_EVENTS = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY_LIMIT}
# Gradio's cache of uploads (and of its copies of our outputs): every minute, delete what is older than
# 10 minutes (an upload is used within seconds); and check every 2 s that it holds at most 512 MB.
DELETE_CACHE = (60, 600)
CACHE_MAX_BYTES = 512 * 2**20
CACHE_CHECK_S = 2.0

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]

STATIC = Path(__file__).with_name("static")
CSS = (STATIC / "style.css").read_text(encoding="utf-8")
# Enter in the β slider's number box leaves the box, so the typed value is committed (the release event
# snaps the slider and warns when the value is outside the trained range).
ENTER_BLURS = (STATIC / "enter_blurs.js").read_text(encoding="utf-8")


def launch_kwargs() -> dict:
    """Keyword arguments for `demo.launch()` shared by app.py and the tests."""
    return {
        "max_file_size": MAX_FILE_SIZE,
        "css": CSS,
        # System fonts: the page must look right offline, without fetching web fonts.
        "theme": gr.themes.Soft(primary_hue="indigo", font=SYSTEM_FONTS, font_mono=MONO_FONTS),
        "footer_links": ["api"],
    }


class Handlers(types.SimpleNamespace):
    """The functions behind the events: each tab's by its API name (`divergence`, `divergence_preset`,
    `fit`, `fit_preset`, `reconstruct`, ..., `posterior`, `decode_click`), and the page shell's
    (`follow_beta`, `warn_outside`, `snap`, `rate_distortion`, `plane`). Their parameter names are the
    API's."""


def make_handlers(
    ladder: inf.Ladder, posterior_models: inf.Ladder | None = None, why_not: str = ""
) -> Handlers:
    """`posterior_models`: what the Posterior tab explores (see `inf.posterior_ladder`); None → its
    event answers with `why_not`."""
    models = Models(ladder, posterior_models, why_not)
    found = {}
    for tab in TABS:
        found.update(tab.handlers(models))
    return Handlers(**found, **_shell_handlers(ladder))


def _raw_beta(beta) -> float:
    """A raw β from a client (the slider's, not checked by Gradio) → a float, NaN when it is not a
    number; a gr.Error for what no slider sends (a list, a dict, ...)."""
    if beta is None or isinstance(beta, bool) or not isinstance(beta, (int, float, str)):
        raise user_error(f"β must be a number, got {type(beta).__name__}")
    try:
        return float(beta)
    except ValueError:
        return math.nan


def _image_point(stats) -> tuple[float, float] | None:
    """(KL, recon NLL) of the Reconstruct tab's numbers; a gr.Error when they are not such numbers."""
    if stats is None:
        return None
    if not isinstance(stats, dict):
        raise user_error(f"stats must be the Reconstruct tab's numbers (a dict), got {type(stats).__name__}")
    try:
        point = (float(stats["kl"]), float(stats["recon_nll"]), float(stats["beta"]))
    except (KeyError, TypeError, ValueError):
        raise user_error("stats must hold the numbers 'beta', 'kl' and 'recon_nll'") from None
    if not all(math.isfinite(v) for v in point):
        raise user_error("stats must hold finite numbers")
    return point


def _shell_handlers(ladder: inf.Ladder) -> dict:
    rd_points = inf.rate_distortion_points(ladder)
    render = gr.Plot(render=False).postprocess  # a figure → what the page's gr.Plot sends

    def range_note(beta) -> inf.Rung:
        """The rung a raw slider value stands for; a warning (a toast, never an error) when the value is
        not a number or lies outside the trained range, naming the β shown instead."""
        value = _raw_beta(beta)
        if not math.isfinite(value):
            gr.Warning(f"β must be a number; showing β = {text.fmt_beta(ladder.betas[0])}")
            return ladder.rungs[0]
        rung = ladder.pick(value)
        if not ladder.betas[0] <= value <= ladder.betas[-1]:
            gr.Warning(
                f"β = {value:g} is outside the trained models' range "
                f"[{text.fmt_beta(ladder.betas[0])}, {text.fmt_beta(ladder.betas[-1])}]: showing β = "
                f"{text.fmt_beta(rung.beta)}"
            )
        return rung

    def rate_distortion(beta, stats: dict | None = None):
        """The ladder on the rate–distortion plane (a matplotlib figure); this image's (KL, recon NLL)
        when `stats` is its."""
        if not rd_points:
            return None
        rung = ladder.pick(beta)
        point = _image_point(stats)
        image = point[:2] if point is not None and point[2] == rung.beta else None
        return plots.rate_distortion_figure(rd_points, current_beta=rung.beta, image=image)

    @functools.cache
    def plane_of(rung_beta: float):  # one rendered plane per trained β: a few rungs, drawn once each
        return render(rate_distortion(rung_beta))

    def plane(beta, stats: dict | None = None):
        """`rate_distortion`, rendered for the page; the plane without an image is drawn once per β."""
        value = _raw_beta(beta)
        if not math.isfinite(value):
            raise user_error(f"β must be a finite number, got {beta!r}")
        rung = ladder.pick(value)
        point = _image_point(stats)
        if point is None or point[2] != rung.beta:
            return plane_of(rung.beta)
        return render(rate_distortion(rung.beta, stats))

    def follow_beta(beta):
        """The slider moved (dragged or typed; the raw value, not range-checked by Gradio) → the nearest
        trained β (the one every tab uses), its card and the rate–distortion plane."""
        rung = range_note(beta)
        return rung.beta, text.model_card(rung, ladder), plane_of(rung.beta)

    def warn_outside(beta, evt: gr.EventData = None) -> None:
        """β committed (the end of a drag, Enter, or leaving the number box): a toast if it was outside
        the trained range. The raw value is the release event's data; by the time Gradio reads the
        slider's own value, the browser may have clamped a typed 100 to the end of the range."""
        raw = getattr(evt, "_data", None)
        range_note(beta if raw is None else raw)

    def snap(beta):
        """The slider let go (end of a drag, or typing done): move it onto the nearest trained β."""
        value = _raw_beta(beta)
        nearest = ladder.pick(value).beta if math.isfinite(value) else ladder.betas[0]
        return gr.skip() if value == nearest else nearest

    return {
        "follow_beta": follow_beta,
        "warn_outside": warn_outside,
        "snap": snap,
        "rate_distortion": rate_distortion,
        "plane": plane,
    }


def build_demo(ladder: inf.Ladder) -> gr.Blocks:
    posterior_models, why_not = inf.posterior_ladder(ladder)
    h = make_handlers(ladder, posterior_models, why_not)
    examples, examples_label = example_paths(ladder)
    with gr.Blocks(title="vae-triton · β-VAE demo", delete_cache=DELETE_CACHE) as demo:
        slider, beta, card, rd_plot = _shell(ladder, h)
        page = Page(
            Models(ladder, posterior_models, why_not), h, beta, examples, examples_label, MODEL_EVENTS
        )
        tabs = []
        with gr.Tabs():
            for module in TABS:
                name = module.__name__.rsplit(".", 1)[-1]
                with gr.Tab(module.LABEL, id=name):
                    gr.Markdown(
                        text.TAB_FORMULAS[name], latex_delimiters=text.LATEX, elem_classes=["formula"]
                    )
                    tab = module.layout(page)
                if tab is not None:
                    tabs.append(tab)
        _wire_slider(h, slider, beta, card, rd_plot)
        for tab in tabs:
            _wire_tab(tab)
            if tab.plane_point is not None:  # the image's (rate, distortion) on the plane
                tab.plane_point.change(
                    h.plane,
                    inputs=[beta, tab.plane_point],
                    outputs=[rd_plot],
                    preprocess=False,
                    api_visibility="private",
                    show_progress="hidden",
                    **MODEL_EVENTS,
                )
        # Then each tab re-runs on its own inputs in its own event, so a bad value on one tab (a seed of
        # −5) never touches another.
        follow = None
        for tab in tabs:
            if any(c is beta for c in tab.inputs):
                event = dict(**_following(tab, beta, ladder.betas), **_PRIVATE)
                follow = beta.change(**event) if follow is None else follow.then(**event)
        demo.load(None, js=ENTER_BLURS)
        for tab in tabs:
            demo.load(**_following(tab, beta, ladder.betas), **_PRIVATE)
    for fn in demo.fns.values():  # gr.Examples' own events come unqueued: queue them too
        fn.queue = fn.queue or fn.fn is not None
    outputs.bound_gradio_cache(demo, CACHE_MAX_BYTES, CACHE_CHECK_S)
    return demo


_PRIVATE = dict(api_visibility="private", show_progress="minimal", **MODEL_EVENTS)
_QUIET = dict(api_visibility="private", show_progress="hidden", **MODEL_EVENTS)


def _shell(ladder: inf.Ladder, h: Handlers):
    """The page above the tabs: intro, banner, β slider (and the hidden trained β the tabs read), the
    rate–distortion plane, the model card."""
    betas = ladder.betas
    gr.Markdown(text.intro(ladder))
    banner = text.banner(ladder)
    gr.Markdown(
        banner, visible=bool(banner), elem_id="banner-untrained" if ladder.untrained else "banner-notice"
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            slider = gr.Slider(
                minimum=betas[0],
                maximum=betas[-1] if len(betas) > 1 else betas[0] + 1,
                value=betas[0],
                step=0.1,
                label="β (KL weight in training)",
                info="Snaps to the trained models: β ∈ {" + ", ".join(text.fmt_beta(b) for b in betas) + "}",
                interactive=len(betas) > 1,
                visible=len(betas) > 1,  # one trained model: nothing to slide (the card says its β)
                elem_id="beta-slider",
            )
            # The β every tab uses: the trained β nearest the slider's. A plain number (no range for
            # Gradio to check), so a typed β = 100 reaches our message instead of failing each event.
            beta = gr.Number(betas[0], visible=False, label="beta", elem_id="beta-rung")
            rd_plot = gr.Plot(
                h.plane(betas[0]),
                label="rate–distortion plane",
                show_label=False,
                elem_id="rd-plane",
                visible=bool(inf.rate_distortion_points(ladder)),
            )
        with gr.Column(scale=3):
            card = gr.Markdown(text.model_card(ladder.rungs[0], ladder), elem_id="model-card")
    return slider, beta, card, rd_plot


def _wire_slider(h: Handlers, slider: gr.Slider, beta: gr.Number, card: gr.Markdown, rd_plot: gr.Plot):
    """The slider moved (dragged, or typed: a raw value, no range check): the card, the rate–distortion
    plane and the β the tabs use follow the nearest trained β at once; the slider itself snaps when let
    go (release: the end of a drag, or leaving the number box; Enter leaves it, see ENTER_BLURS).
    Snapping during a drag would fight the pointer."""
    slider.change(h.follow_beta, inputs=[slider], outputs=[beta, card, rd_plot], preprocess=False, **_QUIET)
    slider.release(h.snap, inputs=[slider], outputs=[slider], preprocess=False, **_QUIET)
    # Typing a β beyond the range: the browser clamps it to the end of the slider, so the user learns
    # why when the value is committed. Not on `input`: Gradio drops (or, always_last, re-reads after
    # the clamp) the keystrokes of "100" that come while "1" is being checked; the release event's
    # data is the raw value, captured before the clamp. Queued: Gradio delivers warnings only through
    # the queue.
    slider.release(
        h.warn_outside,
        inputs=[slider],
        outputs=None,
        preprocess=False,
        trigger_mode="multiple",  # every commit is checked with its own value
        **_QUIET,
    )


def _wire_tab(tab: Tab) -> None:
    """The tab's public event on its button, and (private conveniences) a new image re-runs it, quietly
    while an image is missing; after a failure its outputs are cleared."""
    event = tab.button.click(tab.fn, tab.inputs, tab.outputs, api_name=tab.api_name, **MODEL_EVENTS)
    event.failure(**_cleared(tab), api_visibility="private", **MODEL_EVENTS)
    for component in tab.inputs[: tab.images]:
        # trigger_mode "once": an upload fires `change` twice in Gradio 6.31's front end (seen as two
        # identical error toasts); a trigger while the event runs is dropped, not queued.
        component.change(**_when_given(tab), trigger_mode="once", **_PRIVATE).failure(
            **_cleared(tab), api_visibility="private", **MODEL_EVENTS
        )


def _none_for(tab: Tab):
    return [None] * len(tab.outputs) if len(tab.outputs) > 1 else None


def _skip_for(tab: Tab):
    return [gr.skip()] * len(tab.outputs) if len(tab.outputs) > 1 else gr.skip()


def _cleared(tab: Tab) -> dict:
    """After a failed event: empty its outputs (the error toast has said why), so nothing stale stays."""
    return {"fn": lambda: _none_for(tab), "inputs": None, "outputs": tab.outputs}


def _following(tab: Tab, beta: gr.Number, betas: list[float]) -> dict:
    """The tab's event re-run when β moves or the page loads: skipped until β sits on a trained β (the
    snap moves it there, and that change runs it), and quiet on bad input: the tab's outputs are cleared,
    no toast (the user has not touched this tab; its own button says what is wrong)."""
    fn = _when_given(tab)["fn"]
    beta_at = next((i for i, c in enumerate(tab.inputs) if c is beta), None)

    def follow(*args):
        try:
            on_rung = beta_at is None or float(args[beta_at]) in betas
        except (TypeError, ValueError):
            on_rung = False
        if not on_rung:
            return _skip_for(tab)
        try:
            return fn(*args)
        except gr.Error:
            return _none_for(tab)

    return {"fn": follow, "inputs": tab.inputs, "outputs": tab.outputs}


def _when_given(tab: Tab) -> dict:
    """The same event, skipped (no error toast) while any of its image inputs is empty."""

    def run_if_given(*args):
        if any(a is None for a in args[: tab.images]):
            return _skip_for(tab)
        return tab.fn(*args)

    return {"fn": run_if_given, "inputs": tab.inputs, "outputs": tab.outputs}
