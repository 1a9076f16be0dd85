"""Posterior: for a model with 2 latent dimensions, one image → the exact posterior p(z|x) on a grid
beside q(z|x), the identity log p(x) = ELBO + KL[q ‖ p(z|x)] with its numbers, and the importance-
weighted bounds by K (API name `posterior`); a click on the latent map decodes the code under it."""

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

    def posterior_rung(beta) -> inf.Rung:
        if explored is None:
            raise inf.InputError(models.why_not)
        return explored.pick(beta if explored is models.ladder else explored.betas[0])

    @user_errors
    @gpu
    def posterior(image: str, beta: float | None = None):
        """One image → the exact posterior beside q, the identity with its numbers, the IW bounds by K."""
        rung = posterior_rung(beta)
        x = models.load(image, explored)
        r = inf.explore_posterior(rung, x)
        figure = plots.posterior_figure(
            latent_map=inf.latent_map(rung).numpy(),
            map_extent=inf.MAP_EXTENT,
            window_map=r["window_map"],
            z=r["z"],
            log_posterior=r["log_posterior"],
            log_q=r["log_q"],
            mu=r["mu"],
        )
        bounds = plots.iw_figure(r["iw_ks"], r["iw_means"], r["iw_sems"], log_px=r["log_px"], elbo=r["elbo"])
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

    @user_errors
    @gpu
    def decode_click(beta: float | None = None, evt: gr.EventData = None):
        """A click on the latent map (a gr.SelectData, or the raw event: {"index": [x, y]} in pixels of
        the shown map) → the image decoded from the code under the pointer."""
        rung = posterior_rung(beta)
        px, py = _clicked_pixel(evt)
        side = inf.latent_map(rung).shape[0] * MAP_SCALE
        z1, z2 = inf.map_pixel_to_z(px, py, side, side)
        image = inf.decode_code(rung, z1, z2)
        return outputs.png_file(im.to_pil(image[0])), text.decoded_caption(z1, z2)

    return {"posterior": posterior, "decode_click": decode_click}


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


def layout(page: Page) -> Tab | None:
    """The tab's layout and its click-to-decode event. Without a 2-latent model it is only a message."""
    models = page.models.posterior
    if models is None:
        gr.Markdown(
            f"**Not available for this model.** {page.models.why_not}", elem_id="posterior-unavailable"
        )
        return None
    examples, label = example_paths(models)
    rung = models.rungs[0]
    gr.Markdown(text.posterior_intro(rung, models), elem_classes=["caption"])
    with gr.Row():
        with gr.Column(scale=1, min_width=200):
            image = image_input("your image", examples[0] if examples else None, 200, "posterior-input")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=label, cache_examples=False)
            button = gr.Button("Explore the posterior", variant="primary")
        seen = image_output("what the model sees", height=200, elem_id="posterior-seen")
    # The figures carry their own titles: Gradio's label box would sit on top of them.
    figure = gr.Plot(label="p(z|x) and q(z|x)", show_label=False, elem_id="posterior-plot")
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
    latent.select(
        page.handlers.decode_click,
        inputs=[page.beta] if follows else None,
        outputs=[decoded, decoded_caption],
        api_visibility="private",
        **page.model_events,
    )
    return Tab(
        api_name="posterior",
        fn=page.handlers.posterior,
        inputs=[image, page.beta] if follows else [image],
        outputs=[seen, latent, figure, identity, bounds, bounds_caption, numbers],
        button=button,
        images=1,
    )
