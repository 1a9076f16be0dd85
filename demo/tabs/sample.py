"""Sample: n images decoded from codes drawn from the prior z ~ N(0, T²·I) (API name `sample`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import gradio as gr

from .. import images as im
from .. import inference as inf
from .. import outputs
from .common import Models, Page, Tab, gpu, image_output, user_errors

LABEL = "Sample"


def handlers(models: Models) -> dict[str, Callable]:
    ladder = models.ladder

    @user_errors
    @gpu
    def sample(beta: float, n: int = 16, temperature: float = 1.0, seed: int = 0):
        """n images decoded from z ~ N(0, temperature²·I)."""
        images = inf.sample_images(ladder.pick(beta), n, temperature, seed)
        return outputs.png_file(im.grid(images, cols=min(8, math.ceil(math.sqrt(len(images)))), scale=2))

    return {"sample": sample}


def layout(page: Page) -> Tab:
    gr.Markdown(
        "Draw codes from the prior z ~ N(0, T²·I) and decode them. A temperature T < 1 stays "
        "near the centre of the prior: cleaner, less varied images.",
        elem_classes=["caption"],
    )
    with gr.Row():
        n = gr.Slider(*inf.LIMITS["n"], value=16, step=1, label="number of samples")
        temperature = gr.Slider(*inf.LIMITS["temperature"], value=1.0, step=0.05, label="temperature T")
        # No `minimum=`: Gradio would reject a bad seed before our code can say why (and in every
        # event that shared the input).
        seed = gr.Number(value=0, precision=0, label="seed (integer ≥ 0)", elem_id="seed")
        button = gr.Button("Sample", variant="primary")
    samples = image_output("samples", height=560, elem_id="samples")
    return Tab(
        api_name="sample",
        fn=page.handlers.sample,
        inputs=[page.beta, n, temperature, seed],
        outputs=[samples],
        button=button,
    )
