"""Interpolate: two images → the decoded path between their codes, as a strip (PNG) and an animation
(GIF) (API name `interpolate`)."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from .. import images as im
from .. import inference as inf
from .. import outputs
from .common import Models, Page, Tab, gpu, image_input, image_output, user_errors

LABEL = "Interpolate"
GIF_FRAME_MS = 80  # 12.5 frames per second


def handlers(models: Models) -> dict[str, Callable]:
    ladder = models.ladder

    @user_errors
    @gpu
    def interpolate(image_a: str, image_b: str, beta: float, frames: int = 10, mode: str = "linear"):
        """Two images → the decoded path between their codes, as a strip (PNG) and an animation (GIF)."""
        rung = ladder.pick(beta)
        xa, xb = models.load(image_a), models.load(image_b)
        seq = inf.interpolate_images(rung, xa, xb, frames, mode)
        gif = str(outputs.write_gif(seq, frame_ms=GIF_FRAME_MS))
        return outputs.png_file(im.grid(seq, cols=len(seq), scale=2, gap=2)), gif, gif

    return {"interpolate": interpolate}


def layout(page: Page) -> Tab:
    gr.Markdown(
        "Encode two images, walk from one code to the other in N steps and decode every step. "
        "*Linear* follows the straight line; *spherical* (slerp) follows the great circle, which "
        "keeps the code at a typical distance from the centre of N(0, I).",
        elem_classes=["caption"],
    )
    with gr.Row():
        image_a = image_input("from", page.first, 200)
        image_b = image_input("to", page.second, 200)
        with gr.Column():
            frames = gr.Slider(*inf.LIMITS["frames"], value=10, step=1, label="frames")
            mode = gr.Radio(["linear", "spherical"], value="linear", label="path")
            button = gr.Button("Interpolate", variant="primary")
    pairs = [[a, b] for a, b in zip(page.examples[:3], page.examples[3:6], strict=False)]
    gr.Examples(examples=pairs, inputs=[image_a, image_b], label=page.examples_label, cache_examples=False)
    strip = image_output("decoded frames, from → to", show_label=False, elem_id="strip")
    with gr.Row():
        animation = gr.Image(
            label="animation", type="filepath", height=256, interactive=False, elem_classes=["pixelated"]
        )
        gif_file = gr.File(label="download the GIF", interactive=False)
    return Tab(
        api_name="interpolate",
        fn=page.handlers.interpolate,
        inputs=[image_a, image_b, page.beta, frames, mode],
        outputs=[strip, animation, gif_file],
        button=button,
        images=2,
    )
