"""Reconstruct: one image → the input as the model sees it, its reconstruction from μ(x), and the ELBO
panel with its numbers (API name `reconstruct`)."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from vae_triton.images import pixel_spec

from .. import images as im
from .. import inference as inf
from .. import outputs, text
from .common import Models, Page, Tab, gpu, image_input, image_output, user_errors

LABEL = "Reconstruct"


def handlers(models: Models) -> dict[str, Callable]:
    ladder = models.ladder

    @user_errors
    @gpu
    def reconstruct(image: str, beta: float, iw_samples: int = inf.DEFAULT_IW_SAMPLES):
        """One image → the input as the model sees it, its reconstruction, the ELBO panel, its numbers."""
        rung = ladder.pick(beta)
        x = models.load(image)
        recon, stats = inf.reconstruct(rung, x, iw_samples)
        return (
            outputs.png_file(im.to_pil(x[0])),
            outputs.png_file(im.to_pil(recon[0])),
            text.elbo_panel(stats),
            stats,
        )

    return {"reconstruct": reconstruct}


def layout(page: Page) -> Tab:
    gr.Markdown(input_note(page.models.ladder), elem_classes=["caption"])
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            image = image_input("your image", page.first, 240, "recon-input")
        model_input = image_output("what the model sees", height=240, elem_id="model-input")
        reconstruction = image_output("reconstruction from μ(x)", height=240, elem_id="reconstruction")
    with gr.Row():
        with gr.Column(scale=3):
            gr.Examples(
                examples=[[p] for p in page.examples],
                inputs=[image],
                label=page.examples_label,
                cache_examples=False,
            )
        with gr.Column(scale=1, min_width=220):
            iw_samples = gr.Dropdown(
                list(inf.IW_SAMPLE_CHOICES), value=inf.DEFAULT_IW_SAMPLES, label="IW samples K for log p(x)"
            )
            button = gr.Button("Reconstruct", variant="primary")
    panel = gr.Markdown(elem_id="elbo-panel")
    with gr.Accordion("The same numbers as JSON", open=False):
        stats = gr.JSON(label="per-image terms, nats")
    return Tab(
        api_name="reconstruct",
        fn=page.handlers.reconstruct,
        inputs=[image, page.beta, iw_samples],
        outputs=[model_input, reconstruction, panel, stats],
        button=button,
        images=1,
        plane_point=stats,
    )


def input_note(ladder: inf.Ladder) -> str:
    cfg = ladder.config
    prep = pixel_spec(ladder.dataset)
    crop = (
        "the largest centered square"
        if prep.crop is None
        else f"a centered square of {prep.crop_fraction:.0%} of the shorter side "
        f"({prep.title}'s {prep.crop} px of {prep.source_side})"
    )
    colour = "grey" if cfg.image_channels == 1 else "RGB"
    return (
        f"Upload any image or click an example. It is cropped to {crop}, resized to "
        f"{cfg.image_size}×{cfg.image_size} and made {colour}, like the training data (middle). The model "
        "encodes it to q(z|x) and decodes the posterior mean μ(x) (right); the table below splits "
        "log p(x) into its terms for this one image."
    )
