"""Traverse: one image → a grid with a row per latent dimension (most KL first) and a column per value
of that dimension, the others held at μ(x) (API name `traverse`)."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from .. import images as im
from .. import inference as inf
from .. import outputs, text
from .common import Models, Page, Tab, gpu, image_input, image_output, user_errors

LABEL = "Traverse"


def handlers(models: Models) -> dict[str, Callable]:
    ladder = models.ladder
    cfg = ladder.config

    @user_errors
    @gpu
    def traverse(image: str, beta: float, num_dims: int = 8, span: float = 3.0, steps: int = 9):
        """One image → a grid: a row per latent dimension (most KL first), a column per value."""
        rung = ladder.pick(beta)
        x = models.load(image)
        rows, ranked, values = inf.traverse_image(rung, x, num_dims, span, steps)
        scale, gap = 2, 2
        body = im.grid(rows.reshape(-1, *rows.shape[2:]), cols=rows.shape[1], scale=scale, gap=gap)
        row_labels = [f"z{d}\n{kl:.2f} nats" + ("" if kl >= inf.ACTIVE_KL else " (off)") for d, kl in ranked]
        # ASCII signs (not every font has U+2212); two decimals at most: 9 steps over ±3 hit ±0.75.
        col_labels = [f"{v:+.2f}".rstrip("0").rstrip(".") if v else "0" for v in values]
        picture = im.annotated_grid(body, row_labels, col_labels, tile=cfg.image_size * scale, gap=gap)
        return outputs.png_file(picture), text.traverse_caption(ranked, values, ladder.dataset)

    return {"traverse": traverse}


def layout(page: Page) -> Tab:
    latent_dim = page.models.ladder.config.latent_dim
    gr.Markdown(text.traverse_intro(page.models.ladder.betas), elem_classes=["caption"])
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input("image", page.first, 200)
            gr.Examples(
                examples=[[p] for p in page.examples],
                inputs=[image],
                label=page.examples_label,
                cache_examples=False,
            )
        with gr.Column(scale=1):
            num_dims = gr.Slider(
                1,
                min(latent_dim, inf.LIMITS["num_dims"][1]),
                value=min(latent_dim, 10),
                step=1,
                label="dimensions (rows)",
            )
            span = gr.Slider(
                *inf.LIMITS["span"], value=3.0, step=0.5, label="range ± (prior standard deviations)"
            )
            steps = gr.Slider(*inf.LIMITS["steps"], value=9, step=2, label="values per dimension")
            button = gr.Button("Traverse", variant="primary")
    grid = image_output("latent traversal", show_label=False, elem_id="traversal")
    caption = gr.Markdown(elem_classes=["caption"])
    return Tab(
        api_name="traverse",
        fn=page.handlers.traverse,
        inputs=[image, page.beta, num_dims, span, steps],
        outputs=[grid, caption],
        button=button,
        images=1,
    )
