"""The Gradio page: a β slider, the selected model's card, and four tabs (reconstruct, interpolate,
sample, traverse) whose public events carry the API names of DESIGN §7.

`make_handlers(ladder)` gives the plain functions behind the events (tested without a server);
`build_demo(ladder)` lays them out; `launch_kwargs()` holds what `launch()` needs (CSS, upload cap).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from . import images as im
from . import inference as inf
from . import text

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only inside @spaces.GPU functions
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator is a no-op

    def gpu(fn):
        return fn


MAX_FILE_SIZE = "10mb"  # uploads above this are refused by the server before any decoding
CONCURRENCY_LIMIT = 2  # model computations at once, over all events (they share one concurrency id)
QUEUE_SIZE = 32
GIF_FRAME_MS = 80  # 12.5 frames per second

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.fill-preview img { width: 100%; height: 100%; object-fit: contain; }
#banner-untrained { background: #b91c1c; color: #fff; border-radius: 8px; padding: 4px 16px; }
#banner-untrained * { color: #fff !important; }
#banner-notice { background: #fef3c7; border-radius: 8px; padding: 2px 12px; }
#elbo-panel table { font-size: 0.95em; }
.caption p { color: var(--body-text-color-subdued); font-size: 0.92em; }
"""


def launch_kwargs() -> dict:
    """Keyword arguments for `demo.launch()` shared by app.py and the tests."""
    return {
        "max_file_size": MAX_FILE_SIZE,
        "css": CSS,
        # System fonts: the page must look right offline, without fetching web fonts.
        "theme": gr.themes.Soft(primary_hue="indigo", font=SYSTEM_FONTS, font_mono=MONO_FONTS),
        "footer_links": ["api"],
    }


def _readable_upload_errors(component: gr.Image) -> gr.Image:
    """Make the component's upload decoding failures a readable gr.Error (Gradio would report a bare
    exception naming a server path). Wrapped on the instance: subclassing a component makes Gradio write a
    `.pyi` stub next to this file at import time."""
    preprocess = component.preprocess

    @functools.wraps(preprocess)
    def safe_preprocess(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            raise gr.Error(
                f"The image has more than {im.MAX_IMAGE_PIXELS:,} pixels: downscale it first."
            ) from None
        except Exception:  # PIL raises several types for non-images and broken files
            raise gr.Error(
                "The upload is not a readable image: use a PNG, JPEG, GIF, BMP or WebP file."
            ) from None

    component.preprocess = safe_preprocess
    return component


def _user_errors(fn):
    """Bad input (ValueError, incl. InputError) → gr.Error with the message; the app keeps running."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as e:
            raise gr.Error(str(e)) from None

    return wrapper


@dataclass
class Handlers:
    """The functions behind the events (their parameter names are the API's)."""

    reconstruct: Callable
    interpolate: Callable
    sample: Callable
    traverse: Callable
    card: Callable
    snap: Callable


def make_handlers(ladder: inf.Ladder) -> Handlers:
    cfg = ladder.config

    def load(image: str):
        return im.to_model_input(im.open_image(image), cfg.image_channels, cfg.image_size, ladder.dataset)

    @_user_errors
    @gpu
    def reconstruct(image: str, beta: float, iw_samples: int = inf.DEFAULT_IW_SAMPLES):
        """One image → the input as the model sees it, its reconstruction, the ELBO panel, its numbers."""
        rung = ladder.pick(beta)
        x = load(image)
        recon, stats = inf.reconstruct(rung, x, iw_samples)
        return im.to_pil(x[0]), im.to_pil(recon[0]), text.elbo_panel(stats), stats

    @_user_errors
    @gpu
    def interpolate(image_a: str, image_b: str, beta: float, frames: int = 10, mode: str = "linear"):
        """Two images → the decoded path between their codes, as a strip (PNG) and an animation (GIF)."""
        rung = ladder.pick(beta)
        xa, xb = load(image_a), load(image_b)
        seq = inf.interpolate_images(rung, xa, xb, frames, mode)
        gif = str(im.write_gif(seq, frame_ms=GIF_FRAME_MS))
        return im.grid(seq, cols=len(seq), scale=2, gap=2), gif, gif

    @_user_errors
    @gpu
    def sample(beta: float, n: int = 16, temperature: float = 1.0, seed: int = 0):
        """n images decoded from z ~ N(0, temperature²·I)."""
        images = inf.sample_images(ladder.pick(beta), n, temperature, seed)
        return im.grid(images, cols=min(8, math.ceil(math.sqrt(len(images)))), scale=2)

    @_user_errors
    @gpu
    def traverse(image: str, beta: float, num_dims: int = 8, span: float = 3.0, steps: int = 9):
        """One image → a grid: a row per latent dimension (most KL first), a column per value."""
        rung = ladder.pick(beta)
        x = load(image)
        rows, ranked, values = inf.traverse_image(rung, x, num_dims, span, steps)
        scale, gap = 2, 2
        body = im.grid(rows.reshape(-1, *rows.shape[2:]), cols=rows.shape[1], scale=scale, gap=gap)
        row_labels = [
            f"z{d}  {kl:5.2f} nats" + ("" if kl >= inf.ACTIVE_KL else "  (off)") for d, kl in ranked
        ]
        # ASCII signs (not every font has U+2212); two decimals at most: 9 steps over ±3 hit ±0.75.
        col_labels = [f"{v:+.2f}".rstrip("0").rstrip(".") if v else "0" for v in values]
        picture = im.annotated_grid(body, row_labels, col_labels, tile=cfg.image_size * scale, gap=gap)
        return picture, text.traverse_caption(ranked, values)

    def card(beta: float):
        return text.model_card(ladder.pick(beta), ladder)

    def snap(beta: float):
        """The slider's value moved to the nearest trained β (only when it is not there already)."""
        nearest = ladder.pick(beta).beta
        return gr.skip() if float(beta) == nearest else nearest

    return Handlers(reconstruct, interpolate, sample, traverse, card, snap)


def example_paths(ladder: inf.Ladder) -> tuple[list[str], str]:
    """Example images for the loaded model's dataset, and the label that says what they are."""
    if ladder.dataset == "dsprites":
        paths = sorted(str(p) for p in inf.EXAMPLES_DIR.glob("dsprites-*.png"))
        return paths, "dSprites examples (rendered by train.data.dsprites_images) — click one"
    # No dataset images ship with the repo (CelebA's licence forbids it): use the model's own samples.
    images = inf.sample_images(ladder.rungs[0], 6, 0.7, 0)
    im.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="examples-", dir=im.OUTPUT_DIR))  # one per app process
    paths = []
    for i, image in enumerate(images):
        path = folder / f"sample-{i}.png"
        im.to_pil(image, scale=1).save(path, format="PNG")
        paths.append(str(path))
    return (
        paths,
        f"samples of the β={text.fmt_beta(ladder.betas[0])} model "
        f"(no {ladder.dataset} images ship with the app)",
    )


def _input_note(ladder: inf.Ladder) -> str:
    cfg = ladder.config
    prep = im.PREPROCESS.get(ladder.dataset, im.DEFAULT_PREPROCESS)
    crop = (
        "the largest centered square"
        if prep.crop_fraction == 1.0
        else f"a centered square of {prep.crop_fraction:.0%} of the shorter side (CelebA's 148 px of 178)"
    )
    colour = "grey" if cfg.image_channels == 1 else "RGB"
    return (
        f"Upload any image or click an example. It is cropped to {crop}, resized to "
        f"{cfg.image_size}×{cfg.image_size} and made {colour}, like the training data (middle). The model "
        "encodes it to q(z|x) and decodes the posterior mean μ(x) (right); the table below splits "
        "log p(x) into its terms for this one image."
    )


def _image_input(label: str, value, height: int, elem_id: str | None = None) -> gr.Image:
    image = gr.Image(
        label=label,
        elem_id=elem_id,
        value=value,
        type="filepath",
        image_mode=None,  # keep the upload as it is: the training preprocessing converts it
        sources=["upload", "clipboard"],
        height=height,
        elem_classes=["pixelated", "fill-preview"],
    )
    return _readable_upload_errors(image)


def _image_output(label: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, elem_classes=["pixelated"], **kwargs)


def build_demo(ladder: inf.Ladder) -> gr.Blocks:
    h = make_handlers(ladder)
    examples, examples_label = example_paths(ladder)
    cfg = ladder.config
    betas = ladder.betas
    first = examples[0] if examples else None
    second = examples[min(4, len(examples) - 1)] if examples else None
    model_events = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY_LIMIT}

    with gr.Blocks(title="vae-triton · β-VAE demo", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(text.INTRO)
        banner = text.banner(ladder)
        gr.Markdown(
            banner,
            visible=bool(banner),
            elem_id="banner-untrained" if ladder.untrained else "banner-notice",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=260):
                beta = gr.Slider(
                    minimum=betas[0],
                    maximum=betas[-1] if len(betas) > 1 else betas[0] + 1,
                    value=betas[0],
                    step=0.1,
                    label="β (KL weight in training)",
                    info="Snaps to the trained models: β ∈ {"
                    + ", ".join(text.fmt_beta(b) for b in betas)
                    + "}",
                    interactive=len(betas) > 1,
                    elem_id="beta-slider",
                )
            with gr.Column(scale=5):
                card = gr.Markdown(h.card(betas[0]), elem_id="model-card")

        with gr.Tabs():
            with gr.Tab("Reconstruct", id="reconstruct"):
                gr.Markdown(_input_note(ladder), elem_classes=["caption"])
                with gr.Row():
                    with gr.Column(scale=1, min_width=220):
                        image = _image_input("your image", first, 240, "recon-input")
                    model_input = _image_output("what the model sees", height=240, elem_id="model-input")
                    reconstruction = _image_output(
                        "reconstruction from μ(x)", height=240, elem_id="reconstruction"
                    )
                with gr.Row():
                    with gr.Column(scale=3):
                        gr.Examples(
                            examples=[[p] for p in examples],
                            inputs=[image],
                            label=examples_label,
                            cache_examples=False,
                        )
                    with gr.Column(scale=1, min_width=220):
                        iw_samples = gr.Dropdown(
                            list(inf.IW_SAMPLE_CHOICES),
                            value=inf.DEFAULT_IW_SAMPLES,
                            label="IW samples K for log p(x)",
                        )
                        recon_button = gr.Button("Reconstruct", variant="primary")
                panel = gr.Markdown(elem_id="elbo-panel")
                with gr.Accordion("The same numbers as JSON", open=False):
                    stats = gr.JSON(label="per-image terms, nats")

            with gr.Tab("Interpolate", id="interpolate"):
                gr.Markdown(
                    "Encode two images, walk from one code to the other in N steps and decode every step. "
                    "*Linear* follows the straight line; *spherical* (slerp) follows the great circle, which "
                    "keeps the code at a typical distance from the centre of N(0, I).",
                    elem_classes=["caption"],
                )
                with gr.Row():
                    image_a = _image_input("from", first, 200)
                    image_b = _image_input("to", second, 200)
                    with gr.Column():
                        frames = gr.Slider(*inf.LIMITS["frames"], value=10, step=1, label="frames")
                        mode = gr.Radio(["linear", "spherical"], value="linear", label="path")
                        interp_button = gr.Button("Interpolate", variant="primary")
                pairs = [[a, b] for a, b in zip(examples[:3], examples[3:6], strict=False)]
                gr.Examples(
                    examples=pairs, inputs=[image_a, image_b], label=examples_label, cache_examples=False
                )
                strip = _image_output("decoded frames, from → to")
                with gr.Row():
                    animation = gr.Image(
                        label="animation",
                        type="filepath",
                        height=256,
                        interactive=False,
                        elem_classes=["pixelated"],
                    )
                    gif_file = gr.File(label="download the GIF", interactive=False)

            with gr.Tab("Sample", id="sample"):
                gr.Markdown(
                    "Draw codes from the prior z ~ N(0, T²·I) and decode them. A temperature T < 1 stays "
                    "near the centre of the prior: cleaner, less varied images.",
                    elem_classes=["caption"],
                )
                with gr.Row():
                    n = gr.Slider(*inf.LIMITS["n"], value=16, step=1, label="number of samples")
                    temperature = gr.Slider(
                        *inf.LIMITS["temperature"], value=1.0, step=0.05, label="temperature T"
                    )
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                    sample_button = gr.Button("Sample", variant="primary")
                samples = _image_output("samples", height=560)

            with gr.Tab("Traverse", id="traverse"):
                gr.Markdown(
                    "Encode an image, then sweep one latent dimension at a time while holding the others at "
                    "μ(x). This is where β shows: compare the grid at the smallest and the largest β.",
                    elem_classes=["caption"],
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        trav_image = _image_input("image", first, 200)
                        gr.Examples(
                            examples=[[p] for p in examples],
                            inputs=[trav_image],
                            label=examples_label,
                            cache_examples=False,
                        )
                    with gr.Column(scale=1):
                        num_dims = gr.Slider(
                            1,
                            min(cfg.latent_dim, inf.LIMITS["num_dims"][1]),
                            value=min(cfg.latent_dim, 10),
                            step=1,
                            label="dimensions (rows)",
                        )
                        span = gr.Slider(
                            *inf.LIMITS["span"],
                            value=3.0,
                            step=0.5,
                            label="range ± (prior standard deviations)",
                        )
                        steps = gr.Slider(*inf.LIMITS["steps"], value=9, step=2, label="values per dimension")
                        trav_button = gr.Button("Traverse", variant="primary")
                trav_grid = _image_output("latent traversal", show_label=False, elem_id="traversal")
                trav_caption = gr.Markdown(elem_classes=["caption"])

        # ---- public API: one event per tab, named as in DESIGN §7 ----------------------------------
        recon_io = dict(
            fn=h.reconstruct,
            inputs=[image, beta, iw_samples],
            outputs=[model_input, reconstruction, panel, stats],
        )
        interp_io = dict(
            fn=h.interpolate,
            inputs=[image_a, image_b, beta, frames, mode],
            outputs=[strip, animation, gif_file],
        )
        sample_io = dict(fn=h.sample, inputs=[beta, n, temperature, seed], outputs=[samples])
        trav_io = dict(
            fn=h.traverse, inputs=[trav_image, beta, num_dims, span, steps], outputs=[trav_grid, trav_caption]
        )
        recon_button.click(**recon_io, api_name="reconstruct", **model_events)
        interp_button.click(**interp_io, api_name="interpolate", **model_events)
        sample_button.click(**sample_io, api_name="sample", **model_events)
        trav_button.click(**trav_io, api_name="traverse", **model_events)

        # ---- conveniences (private): new inputs and β moves re-run what is on screen ----------------
        private = dict(api_visibility="private", show_progress="minimal", **model_events)
        image.change(**_when_given(recon_io, 1), **private)
        image_a.change(**_when_given(interp_io, 2), **private)
        image_b.change(**_when_given(interp_io, 2), **private)
        trav_image.change(**_when_given(trav_io, 1), **private)
        beta.release(h.snap, inputs=[beta], outputs=[beta], api_visibility="private", queue=False)
        beta.change(
            h.card,
            inputs=[beta],
            outputs=[card],
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        # One event re-runs every tab: several queued listeners on one slider make Gradio 6.31's front
        # end re-fire `change` in a loop once the value is set from the server (the snap).
        every_tab = _every_tab([(recon_io, 1), (interp_io, 2), (sample_io, 0), (trav_io, 1)])
        beta.change(**every_tab, trigger_mode="always_last", **private)
        demo.load(**every_tab, **private)
    return demo


def _every_tab(events: list[tuple[dict, int]]) -> dict:
    """One event running each tab's function in turn (see `_when_given`); a tab whose inputs fail
    keeps its old output (its own event has already shown the error)."""
    guarded = [(_when_given(io, needed)["fn"], io) for io, needed in events]
    inputs = list(dict.fromkeys(c for _, io in guarded for c in io["inputs"]))  # β once, in order
    outputs = [c for _, io in guarded for c in io["outputs"]]

    def run_every_tab(*values):
        by_component = dict(zip(inputs, values, strict=True))
        results = []
        for fn, io in guarded:
            n = len(io["outputs"])
            try:
                out = fn(*(by_component[c] for c in io["inputs"]))
            except gr.Error:
                out = [gr.skip()] * n
            results.extend(out if n > 1 else [out])
        return results

    return {"fn": run_every_tab, "inputs": inputs, "outputs": outputs}


def _when_given(io: dict, needed: int) -> dict:
    """The same event, skipped (no error toast) while any of its first `needed` image inputs is empty."""
    fn = io["fn"]

    def run_if_given(*args):
        if any(a is None for a in args[:needed]):
            return [gr.skip()] * len(io["outputs"]) if len(io["outputs"]) > 1 else gr.skip()
        return fn(*args)

    return {**io, "fn": run_if_given}
