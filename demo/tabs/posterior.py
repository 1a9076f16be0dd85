"""Posterior: for a model with 2 latent dimensions, one image → the exact posterior p(z|x) on a grid
beside q(z|x) and the best diagonal Gaussian q*, the identity log p(x) = ELBO + KL[q ‖ p(z|x)] with the
gap split into its approximation and amortisation parts, and the importance-weighted bounds by K with
single draws (API name `posterior`). A drawing takes the same path (API name `posterior_sketch`),
preprocessed as MNIST was made. With the bundled digits models, a switch picks the ELBO- or the
IWAE-trained one (the `model` parameter). A click on the latent map decodes the code under it."""

from __future__ import annotations

import math
from collections.abc import Callable

import gradio as gr

from .. import images as im
from .. import inference as inf
from .. import outputs, plots, text
from .common import Models, Page, Tab, example_paths, gpu, image_input, image_output, user_errors

LABEL = "Posterior"
MAP_SCALE = 2  # the latent map is shown at 2× (pixelated), so clicks land in 2× pixel coordinates


def latent_map_file(rung: inf.Rung) -> str:
    tiles = inf.latent_map(rung)
    chw = tiles[None] if tiles.dim() == 2 else tiles.permute(2, 0, 1)
    return outputs.png_file(im.to_pil(chw, scale=MAP_SCALE))


def handlers(models: Models) -> dict[str, Callable]:
    explored = models.posterior
    objectives = explored.objectives if explored is not None else {}

    def posterior_rung(beta) -> inf.Rung:
        if explored is None:
            raise inf.InputError(models.why_not)
        return explored.pick(beta if explored is models.ladder else explored.betas[0])

    def model_rung(model) -> inf.Rung:
        if explored is None:
            raise inf.InputError(models.why_not)
        if not objectives:
            return explored.rungs[0]
        if model is None:
            return next(iter(objectives.values()))
        if model not in objectives:
            raise inf.InputError(f"model must be one of {list(objectives)}, got {model!r}")
        return objectives[model]

    @user_errors
    @gpu
    def posterior(image: str, beta: float | None = None):
        """One image → the exact posterior beside q and q*, the identity and both gaps, the IW bounds."""
        rung = posterior_rung(beta)
        return explore(models.load(image, explored), rung)

    @user_errors
    @gpu
    def posterior_model(image: str, model: str | None = None):
        """`posterior` with the model picked by its training objective (the bundled switch)."""
        rung = model_rung(model)
        return explore(models.load(image, explored), rung)

    @user_errors
    @gpu
    def posterior_sketch(sketch, beta: float | None = None):
        """A drawing (the Sketchpad's value) → `posterior` of it, preprocessed as MNIST was made."""
        rung = posterior_rung(beta)
        return explore(drawing(sketch, rung, explored.dataset), rung)

    @user_errors
    @gpu
    def posterior_sketch_model(sketch, model: str | None = None):
        """`posterior_sketch` with the model picked by its training objective (the bundled switch)."""
        rung = model_rung(model)
        return explore(drawing(sketch, rung, explored.dataset), rung)

    @user_errors
    @gpu
    def decode_click(beta: float | None = None, evt: gr.EventData = None):
        """A click on the latent map (a gr.SelectData, or the raw event: {"index": [x, y]} in pixels of
        the shown map) → the image decoded from the code under the pointer."""
        rung = posterior_rung(beta)
        return _decode_at(rung, evt)

    @user_errors
    @gpu
    def decode_click_model(model: str | None = None, evt: gr.EventData = None):
        """`decode_click` on the map of the model the switch picked."""
        return _decode_at(model_rung(model), evt)

    @user_errors
    @gpu
    def switch_model(image: str | None, model: str | None = None):
        """The switch moved: the picked model's latent map, and the image explored again (when one is
        given)."""
        rung = model_rung(model)
        if image is None:
            return gr.skip(), latent_map_file(rung), *[gr.skip()] * 5
        return explore(models.load(image, explored), rung)

    return {
        "posterior": posterior,
        "posterior_model": posterior_model,
        "posterior_sketch": posterior_sketch,
        "posterior_sketch_model": posterior_sketch_model,
        "decode_click": decode_click,
        "decode_click_model": decode_click_model,
        "switch_model": switch_model,
    }


def explore(x, rung: inf.Rung):
    """One model input (1, C, H, W) → the tab's outputs: what the model sees, the latent map, the
    posterior figure, the identity table, the IW chart and its caption, the numbers."""
    r = inf.explore_posterior(rung, x)
    figure = plots.posterior_figure(
        latent_map=inf.latent_map(rung).numpy(),
        map_extent=inf.MAP_EXTENT,
        window_map=r["window_map"],
        z=r["z"],
        log_posterior=r["log_posterior"],
        log_q=r["log_q"],
        mu=r["mu"],
        log_q_star=r["log_q_star"],
    )
    bounds = plots.iw_figure(
        r["iw_ks"], r["iw_means"], r["iw_sems"], log_px=r["log_px"], elbo=r["elbo"], draws=r["iw_draws"]
    )
    numbers = text.posterior_numbers(r, rung)
    return (
        outputs.png_file(im.to_pil(x[0])),
        latent_map_file(rung),
        figure,
        text.posterior_identity(numbers),
        bounds,
        text.iw_caption(numbers),
        numbers,
    )


def drawing(sketch, rung: inf.Rung, dataset: str):
    """A Sketchpad value → the model input, preprocessed as MNIST was made (a 20/28 box, centre of mass)."""
    cfg = rung.model.config
    digit = im.sketch_to_image(sketch, size=cfg.image_size, box=round(cfg.image_size * 20 / 28))
    return im.to_model_input(digit, cfg.image_channels, cfg.image_size, dataset)


def _decode_at(rung: inf.Rung, evt):
    px, py = _clicked_pixel(evt)
    side = inf.latent_map(rung).shape[0] * MAP_SCALE
    z1, z2 = inf.map_pixel_to_z(px, py, side, side)
    image = inf.decode_code(rung, z1, z2)
    return outputs.png_file(im.to_pil(image[0])), text.decoded_caption(z1, z2)


def _clicked_pixel(evt) -> tuple[float, float]:
    """The (x, y) pixel of a click event. Annotated as gr.EventData (not SelectData) in the handler, so a
    client's malformed event data reaches this message instead of failing inside Gradio."""
    index = getattr(evt, "index", None)
    if index is None:
        data = getattr(evt, "_data", None)
        index = data.get("index") if isinstance(data, dict) else None
    try:
        px, py = (float(v) for v in index)
    except (TypeError, ValueError):
        raise inf.InputError("click a point of the latent map") from None
    if not (math.isfinite(px) and math.isfinite(py)):
        raise inf.InputError("click a point of the latent map")
    return px, py


def _inputs(examples: list[str], label: str):
    """The image upload with its examples, and the sketchpad: (image, button, sketch, draw_button)."""
    with gr.Column(scale=1, min_width=200):
        image = image_input("your image", examples[0] if examples else None, 200, "posterior-input")
        gr.Examples(examples=[[p] for p in examples], inputs=[image], label=label, cache_examples=False)
        button = gr.Button("Explore the posterior", variant="primary")
    with gr.Column(scale=1, min_width=200):
        sketch = gr.Sketchpad(
            label="or draw a digit (brush ✎)",
            type="numpy",
            image_mode="RGB",
            canvas_size=(280, 280),
            fixed_canvas=True,
            brush=gr.Brush(default_size=18, colors=["#000000"], color_mode="fixed"),
            layers=False,
            transforms=(),
            height=260,
            elem_id="posterior-sketch",
        )
        draw_button = gr.Button("Explore the drawing", elem_id="posterior-sketch-button")
    return image, button, sketch, draw_button


def layout(page: Page) -> Tab | None:
    """The tab's layout, its drawing, model-switch and click-to-decode events. Without a 2-latent model
    it is only a message."""
    models = page.models.posterior
    if models is None:
        gr.Markdown(
            f"**Not available for this model.** {page.models.why_not}", elem_id="posterior-unavailable"
        )
        return None
    examples, label = example_paths(models)
    rung = models.rungs[0]
    gr.Markdown(text.posterior_intro(rung, models), elem_classes=["caption"])
    switch = None
    if len(models.objectives) > 1:  # the bundled ELBO- and IWAE-trained digits models
        switch = gr.Radio(
            list(models.objectives),
            value=next(iter(models.objectives)),
            label="model (training objective)",
            elem_id="posterior-model",
        )
    with gr.Row():
        image, button, sketch, draw_button = _inputs(examples, label)
        seen = image_output("what the model sees", height=200, elem_id="posterior-seen")
    # The figures carry their own titles: Gradio's label box would sit on top of them.
    figure = gr.Plot(label="p(z|x), q(z|x) and q*", show_label=False, elem_id="posterior-plot")
    identity = gr.Markdown(elem_id="posterior-identity")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            bounds = gr.Plot(label="IW bounds by K", show_label=False, elem_id="iw-plot")
        with gr.Column(scale=2):
            bounds_caption = gr.Markdown(elem_classes=["caption"], elem_id="iw-caption")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            latent = gr.Image(
                latent_map_file(rung),
                label="latent map over [−3, 3]²: click anywhere to decode that z",
                format="png",
                interactive=False,
                elem_id="latent-map",
                elem_classes=["pixelated"],
            )
        with gr.Column(scale=2, min_width=200):
            decoded = image_output("decoded from the clicked z", height=200, elem_id="decoded")
            decoded_caption = gr.Markdown(elem_classes=["caption"])
    with gr.Accordion("The numbers as JSON", open=False):
        numbers = gr.JSON(label="nats")
    follows = models is page.models.ladder  # a 2-D ladder: β picks the model here too
    chooser = [page.beta] if follows else [switch] if switch is not None else []
    h = page.handlers
    results = [seen, latent, figure, identity, bounds, bounds_caption, numbers]
    latent.select(
        h.decode_click_model if switch is not None else h.decode_click,
        inputs=chooser or None,
        outputs=[decoded, decoded_caption],
        api_name="decode_click",
        api_visibility="private",
        **page.model_events,
    )
    drawn = draw_button.click(
        h.posterior_sketch_model if switch is not None else h.posterior_sketch,
        inputs=[sketch, *chooser],
        outputs=results,
        api_name="posterior_sketch",
        **page.model_events,
    )
    # After a failure (an empty sketch: its toast says so) nothing stale stays on this tab.
    drawn.failure(
        lambda: [None] * len(results), outputs=results, api_visibility="private", **page.model_events
    )
    if switch is not None:  # another model: its latent map, and the image shown explored again
        switch.change(
            h.switch_model,
            inputs=[image, switch],
            outputs=results,
            api_visibility="private",
            **page.model_events,
        )
    return Tab(
        api_name="posterior",
        fn=h.posterior_model if switch is not None else h.posterior,
        inputs=[image, *chooser],
        outputs=results,
        button=button,
        images=1,
    )
