"""The Gradio page: a β slider, the selected model's card, and four tabs (reconstruct, interpolate,
sample, traverse) whose public events carry the API names of DESIGN §7.

`make_handlers(ladder)` gives the plain functions behind the events (tested without a server);
`build_demo(ladder)` lays them out; `launch_kwargs()` holds what `launch()` needs (CSS, upload cap).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from vae_triton.io import atomic_path

from . import images as im
from . import inference as inf
from . import plots, text

log = logging.getLogger("vae_triton.demo")

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
#elbo-panel td:nth-child(2), #posterior-identity td:nth-child(2) { white-space: nowrap; }
#elbo-panel table, #posterior-identity table { display: block; overflow-x: auto; }
#elbo-panel :is(td, th), #posterior-identity :is(td, th) { word-break: normal; overflow-wrap: normal; }
#latent-map img { cursor: crosshair; }
.caption p { color: var(--body-text-color-subdued); font-size: 0.92em; }
/* At phone width the frame strip and the traversal (its labels are drawn in the image) would shrink to a
   sliver and to ~6 px text: keep them larger and let them scroll sideways, from their left end (Gradio
   centres the image, which would put the overflow's left part out of reach). */
@media (max-width: 600px) {
  #strip .image-container, #traversal .image-container { overflow-x: auto; }
  #strip .image-container > button, #traversal .image-container > button { justify-content: flex-start; }
  #strip img { height: 96px; width: auto; max-width: none; }
  #traversal img { width: 760px; height: auto; max-width: none; }
}
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


REPEAT_WINDOW_S = 10.0


def _readable_upload_errors(component: gr.Image) -> gr.Image:
    """Make the component's upload decoding failures a readable gr.Error (Gradio would report a bare
    exception naming a server path). Wrapped on the instance: subclassing a component makes Gradio write a
    `.pyi` stub next to this file at import time.

    Gradio 6.31's front end sends a failed upload's `change` twice; the second failure of the same file
    within REPEAT_WINDOW_S raises an invisible error, so the user sees one message and the log one line.
    """
    preprocess = component.preprocess
    recent: dict[str, float] = {}
    lock = threading.Lock()

    def fail(payload, message: str) -> gr.Error:
        key = str(getattr(payload, "path", None) or payload)
        now = time.monotonic()
        with lock:
            for old in [k for k, t in recent.items() if now - t > REPEAT_WINDOW_S]:
                del recent[old]
            repeated = key in recent
            recent[key] = now
        return gr.Error(message, visible=False, print_exception=False) if repeated else user_error(message)

    @functools.wraps(preprocess)
    def safe_preprocess(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            raise fail(
                payload, f"The image has more than {im.MAX_IMAGE_PIXELS:,} pixels: downscale it first."
            ) from None
        except Exception:  # PIL raises several types for non-images and broken files
            raise fail(
                payload, "The upload is not a readable image: use a PNG, JPEG, GIF, BMP or WebP file."
            ) from None

    component.preprocess = safe_preprocess
    return component


def user_error(message: str) -> gr.Error:
    """A gr.Error for bad input: one line in the server log (a user's mistake is not a server fault, so
    no traceback), one toast on the page."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def _user_errors(fn):
    """Bad input (ValueError, incl. InputError) → gr.Error with the message; the app keeps running."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as e:
            raise user_error(str(e)) from None

    return wrapper


PNG_DIR = im.OUTPUT_DIR / "png"
KEEP_PNG_FILES = 256


def png_file(picture: Image.Image) -> str:
    """`picture` as a PNG file for an Image output, named by its content and written atomically.

    Handing Gradio a PIL image makes it write the PNG to a path named by the content hash with a plain
    `write_bytes`: two identical requests then rewrite (truncate, refill) the very file the other is
    serving, and the client sees "peer closed connection" (h11: less data than Content-Length). A file
    path is instead copied into Gradio's cache under a temporary name and renamed into place.

    The file is written even when one of that name exists: the fresh mtime is what keeps the pruning of
    this or a parallel request from deleting it before Gradio has copied it (an old file of the same
    content could otherwise be returned and pruned in the same call).
    """
    data = _encode_png(picture)
    path = PNG_DIR / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    _prune_pngs()
    return str(path)


def _encode_png(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _prune_pngs() -> None:
    """Keep the newest KEEP_PNG_FILES; older ones have long been copied into Gradio's cache."""

    def age(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    cutoff = time.time() - 60
    for old in sorted(PNG_DIR.glob("*.png"), key=age, reverse=True)[KEEP_PNG_FILES:]:
        if age(old) < cutoff:
            old.unlink(missing_ok=True)


@dataclass
class Handlers:
    """The functions behind the events (their parameter names are the API's)."""

    reconstruct: Callable
    interpolate: Callable
    sample: Callable
    traverse: Callable
    posterior: Callable
    decode_click: Callable
    follow_beta: Callable
    warn_outside: Callable
    snap: Callable
    rate_distortion: Callable


def _loader(ladder: inf.Ladder) -> Callable:
    cfg = ladder.config

    def load(image: str):
        return im.to_model_input(im.open_image(image), cfg.image_channels, cfg.image_size, ladder.dataset)

    return load


def make_handlers(
    ladder: inf.Ladder, posterior_models: inf.Ladder | None = None, why_not: str = ""
) -> Handlers:
    """`posterior_models`: what the Posterior tab explores (see `inf.posterior_ladder`); None → its
    event answers with `why_not`."""
    cfg = ladder.config
    load = _loader(ladder)
    rd_points = inf.rate_distortion_points(ladder)

    @_user_errors
    @gpu
    def reconstruct(image: str, beta: float, iw_samples: int = inf.DEFAULT_IW_SAMPLES):
        """One image → the input as the model sees it, its reconstruction, the ELBO panel, its numbers."""
        rung = ladder.pick(beta)
        x = load(image)
        recon, stats = inf.reconstruct(rung, x, iw_samples)
        return png_file(im.to_pil(x[0])), png_file(im.to_pil(recon[0])), text.elbo_panel(stats), stats

    @_user_errors
    @gpu
    def interpolate(image_a: str, image_b: str, beta: float, frames: int = 10, mode: str = "linear"):
        """Two images → the decoded path between their codes, as a strip (PNG) and an animation (GIF)."""
        rung = ladder.pick(beta)
        xa, xb = load(image_a), load(image_b)
        seq = inf.interpolate_images(rung, xa, xb, frames, mode)
        gif = str(im.write_gif(seq, frame_ms=GIF_FRAME_MS))
        return png_file(im.grid(seq, cols=len(seq), scale=2, gap=2)), gif, gif

    @_user_errors
    @gpu
    def sample(beta: float, n: int = 16, temperature: float = 1.0, seed: int = 0):
        """n images decoded from z ~ N(0, temperature²·I)."""
        images = inf.sample_images(ladder.pick(beta), n, temperature, seed)
        return png_file(im.grid(images, cols=min(8, math.ceil(math.sqrt(len(images)))), scale=2))

    @_user_errors
    @gpu
    def traverse(image: str, beta: float, num_dims: int = 8, span: float = 3.0, steps: int = 9):
        """One image → a grid: a row per latent dimension (most KL first), a column per value."""
        rung = ladder.pick(beta)
        x = load(image)
        rows, ranked, values = inf.traverse_image(rung, x, num_dims, span, steps)
        scale, gap = 2, 2
        body = im.grid(rows.reshape(-1, *rows.shape[2:]), cols=rows.shape[1], scale=scale, gap=gap)
        row_labels = [f"z{d}\n{kl:.2f} nats" + ("" if kl >= inf.ACTIVE_KL else " (off)") for d, kl in ranked]
        # ASCII signs (not every font has U+2212); two decimals at most: 9 steps over ±3 hit ±0.75.
        col_labels = [f"{v:+.2f}".rstrip("0").rstrip(".") if v else "0" for v in values]
        picture = im.annotated_grid(body, row_labels, col_labels, tile=cfg.image_size * scale, gap=gap)
        return png_file(picture), text.traverse_caption(ranked, values)

    post_load = _loader(posterior_models) if posterior_models is not None else None

    def posterior_rung(beta) -> inf.Rung:
        if posterior_models is None:
            raise inf.InputError(why_not)
        return posterior_models.pick(beta if posterior_models is ladder else posterior_models.betas[0])

    @_user_errors
    @gpu
    def posterior(image: str, beta: float | None = None):
        """One image → the exact posterior beside q, the identity with its numbers, the IW bounds by K."""
        rung = posterior_rung(beta)
        x = post_load(image)
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
            png_file(im.to_pil(x[0])),
            latent_map_file(rung),
            figure,
            text.posterior_identity(numbers),
            bounds,
            text.iw_caption(numbers),
            numbers,
        )

    @_user_errors
    @gpu
    def decode_click(beta: float | None = None, evt: gr.SelectData = None):
        """A click on the latent map → the image decoded from the code under the pointer."""
        rung = posterior_rung(beta)
        if evt is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
            raise inf.InputError("click a point of the latent map")
        side = inf.latent_map(rung).shape[0] * MAP_SCALE
        z1, z2 = inf.map_pixel_to_z(float(evt.index[0]), float(evt.index[1]), side, side)
        image = inf.decode_code(rung, z1, z2)
        return png_file(im.to_pil(image[0])), text.decoded_caption(z1, z2)

    def range_note(beta) -> inf.Rung:
        """The rung a raw slider value stands for; a warning (a toast, never an error) when the value is
        not a number or lies outside the trained range, naming the β shown instead."""
        try:
            value = float(beta)
        except (TypeError, ValueError):
            value = math.nan
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

    def follow_beta(beta):
        """The slider moved (dragged or typed; the raw value, not range-checked by Gradio) → the nearest
        trained β (the one every tab uses), its card and the rate–distortion plane."""
        rung = range_note(beta)
        return rung.beta, text.model_card(rung, ladder), rate_distortion(rung.beta)

    def warn_outside(beta, evt: gr.EventData = None) -> None:
        """β committed (the end of a drag, Enter, or leaving the number box): a toast if it was outside
        the trained range. The raw value is the release event's data; by the time Gradio reads the
        slider's own value, the browser may have clamped a typed 100 to the end of the range."""
        raw = getattr(evt, "_data", None)
        range_note(beta if raw is None else raw)

    def snap(beta):
        """The slider let go (end of a drag, or typing done): move it onto the nearest trained β."""
        try:
            value = float(beta)
        except (TypeError, ValueError):
            value = math.nan
        nearest = ladder.pick(value).beta if math.isfinite(value) else ladder.betas[0]
        return gr.skip() if value == nearest else nearest

    def rate_distortion(beta, stats: dict | None = None):
        """The ladder on the rate–distortion plane; this image's (KL, recon NLL) when `stats` is its."""
        if not rd_points:
            return None
        rung = ladder.pick(beta)
        image = None
        if isinstance(stats, dict) and stats.get("beta") == rung.beta and "kl" in stats:
            image = (float(stats["kl"]), float(stats["recon_nll"]))
        return plots.rate_distortion_figure(rd_points, current_beta=rung.beta, image=image)

    return Handlers(
        reconstruct,
        interpolate,
        sample,
        traverse,
        posterior,
        decode_click,
        follow_beta,
        warn_outside,
        snap,
        rate_distortion,
    )


MAP_SCALE = 2  # the latent map is shown at 2× (pixelated), so clicks land in 2× pixel coordinates


def latent_map_file(rung: inf.Rung) -> str:
    tiles = inf.latent_map(rung)
    chw = tiles[None] if tiles.dim() == 2 else tiles.permute(2, 0, 1)
    return png_file(im.to_pil(chw, scale=MAP_SCALE))


def example_paths(ladder: inf.Ladder) -> tuple[list[str], str]:
    """Example images for the loaded model's dataset, and the label that says what they are."""
    own = Path(ladder.rungs[0].source) / "examples"
    if own.is_dir() and any(own.glob("*.png")):  # a model that ships its own (the bundled digits model)
        return sorted(
            str(p) for p in own.glob("*.png")
        ), "examples from the model's held-out data — click one"
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
    posterior_models, why_not = inf.posterior_ladder(ladder)
    h = make_handlers(ladder, posterior_models, why_not)
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
                slider = gr.Slider(
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
                # The β every tab uses: the trained β nearest the slider's. A plain number (no range for
                # Gradio to check), so a typed β = 100 reaches our message instead of failing each event.
                beta = gr.Number(betas[0], visible=False, label="beta", elem_id="beta-rung")
                rd_plot = gr.Plot(
                    h.rate_distortion(betas[0]),
                    label="rate–distortion plane",
                    show_label=False,
                    elem_id="rd-plane",
                    visible=bool(inf.rate_distortion_points(ladder)),
                )
            with gr.Column(scale=3):
                card = gr.Markdown(text.model_card(ladder.rungs[0], ladder), elem_id="model-card")

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
                strip = _image_output("decoded frames, from → to", show_label=False, elem_id="strip")
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
                    # No `minimum=`: Gradio would reject a bad seed before our code can say why (and,
                    # before issue 13, in every event that shared the input).
                    seed = gr.Number(value=0, precision=0, label="seed (integer ≥ 0)", elem_id="seed")
                    sample_button = gr.Button("Sample", variant="primary")
                samples = _image_output("samples", height=560, elem_id="samples")

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

            with gr.Tab("Posterior", id="posterior"):
                post = _posterior_tab(posterior_models, why_not)

        # ---- public API: one event per tab, named as in DESIGN §7; each takes only its own inputs ----
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
        tabs = [(recon_io, 1), (interp_io, 2), (sample_io, 0), (trav_io, 1)]
        buttons = [recon_button, interp_button, sample_button, trav_button]
        names = ["reconstruct", "interpolate", "sample", "traverse"]
        if posterior_models is not None:
            follows = posterior_models is ladder  # a 2-D ladder: β picks the model here too
            post_inputs = [post["image"], beta] if follows else [post["image"]]
            post_io = dict(fn=h.posterior, inputs=post_inputs, outputs=post["outputs"])
            tabs.append((post_io, 1))
            buttons.append(post["button"])
            names.append("posterior")
            post["map"].select(
                h.decode_click,
                inputs=[beta] if follows else None,
                outputs=[post["decoded"], post["decoded_caption"]],
                api_visibility="private",
                **model_events,
            )
        rd_update = dict(fn=h.rate_distortion, inputs=[beta, stats], outputs=[rd_plot], queue=False)
        private = dict(api_visibility="private", show_progress="minimal", **model_events)
        for (io, needed), button, name in zip(tabs, buttons, names, strict=True):
            event = button.click(**io, api_name=name, **model_events)
            event.failure(**_cleared(io), api_visibility="private", queue=False)
            # conveniences (private): a new image re-runs the tab, quietly while an image is missing
            for component in io["inputs"][:needed]:
                # trigger_mode "once": an upload fires `change` twice in Gradio 6.31's front end (seen as
                # two identical error toasts); a trigger while the event runs is dropped, not queued.
                component.change(**_when_given(io, needed), trigger_mode="once", **private).failure(
                    **_cleared(io), api_visibility="private", queue=False
                )
        stats.change(**rd_update, api_visibility="private", show_progress="hidden")

        # The slider moved (dragged, or typed: a raw value, no range check): the card, the rate–distortion
        # plane and the β the tabs use follow the nearest trained β at once; the slider itself snaps when
        # let go (release: the end of a drag, or leaving the number box; Enter leaves it, see ENTER_BLURS).
        # Snapping during a drag would fight the pointer.
        unqueued = dict(api_visibility="private", queue=False, show_progress="hidden")
        slider.change(
            h.follow_beta, inputs=[slider], outputs=[beta, card, rd_plot], preprocess=False, **unqueued
        )
        slider.release(h.snap, inputs=[slider], outputs=[slider], preprocess=False, **unqueued)
        # Typing a β beyond the range: the browser clamps it to the end of the slider, so the user learns
        # why when the value is committed. Not on `input`: Gradio drops (or, always_last, re-reads after
        # the clamp) the keystrokes of "100" that come while "1" is being checked; the release event's
        # data is the raw value, captured before the clamp.
        slider.release(
            h.warn_outside,
            inputs=[slider],
            outputs=None,
            preprocess=False,
            api_visibility="private",
            show_progress="hidden",  # queued: Gradio delivers warnings only through the queue
            trigger_mode="multiple",  # every commit is checked with its own value
        )
        # Then each tab re-runs on its own inputs in its own event, so a bad value on one tab (a seed of
        # −5) never touches another.
        follow = None
        for io, needed in tabs:
            if any(c is beta for c in io["inputs"]):
                event = dict(**_following(io, needed, beta, betas), **private)
                follow = beta.change(**event) if follow is None else follow.then(**event)
        demo.load(None, js=ENTER_BLURS)
        for io, needed in tabs:
            demo.load(**_following(io, needed, beta, betas), **private)
    return demo


ENTER_BLURS = """() => document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target.closest && e.target.closest('#beta-slider')) e.target.blur();
}, true)"""


def _posterior_tab(models: inf.Ladder | None, why_not: str) -> dict:
    """The Posterior tab's layout; its components by role. Without a 2-latent model it is only a message."""
    if models is None:
        gr.Markdown(f"**Not available for this model.** {why_not}", elem_id="posterior-unavailable")
        return {}
    examples, label = example_paths(models)
    rung = models.rungs[0]
    gr.Markdown(text.posterior_intro(rung, models), elem_classes=["caption"])
    with gr.Row():
        with gr.Column(scale=1, min_width=200):
            image = _image_input("your image", examples[0] if examples else None, 200, "posterior-input")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=label, cache_examples=False)
            button = gr.Button("Explore the posterior", variant="primary")
        seen = _image_output("what the model sees", height=200, elem_id="posterior-seen")
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
            decoded = _image_output("decoded from the clicked z", height=200, elem_id="decoded")
            decoded_caption = gr.Markdown(elem_classes=["caption"])
    with gr.Accordion("The numbers as JSON", open=False):
        numbers = gr.JSON(label="nats")
    return {
        "image": image,
        "button": button,
        "map": latent,
        "decoded": decoded,
        "decoded_caption": decoded_caption,
        "outputs": [seen, latent, figure, identity, bounds, bounds_caption, numbers],
    }


def _cleared(io: dict) -> dict:
    """After a failed event: empty its outputs (the error toast has said why), so nothing stale stays."""
    n = len(io["outputs"])
    return {"fn": lambda: [None] * n if n > 1 else None, "inputs": None, "outputs": io["outputs"]}


def _following(io: dict, needed: int, beta: gr.Slider, betas: list[float]) -> dict:
    """The tab's event re-run when β moves or the page loads: skipped until β sits on a trained β (the
    snap moves it there, and that change runs it), and quiet on bad input: the tab's outputs are cleared,
    no toast (the user has not touched this tab; its own button says what is wrong)."""
    fn = _when_given(io, needed)["fn"]
    beta_at = next((i for i, c in enumerate(io["inputs"]) if c is beta), None)
    n = len(io["outputs"])

    def follow(*args):
        try:
            on_rung = beta_at is None or float(args[beta_at]) in betas
        except (TypeError, ValueError):
            on_rung = False
        if not on_rung:
            return [gr.skip()] * n if n > 1 else gr.skip()
        try:
            return fn(*args)
        except gr.Error:
            return [None] * n if n > 1 else None

    return {**io, "fn": follow}


def _when_given(io: dict, needed: int) -> dict:
    """The same event, skipped (no error toast) while any of its first `needed` image inputs is empty."""
    fn = io["fn"]

    def run_if_given(*args):
        if any(a is None for a in args[:needed]):
            return [gr.skip()] * len(io["outputs"]) if len(io["outputs"]) > 1 else gr.skip()
        return fn(*args)

    return {**io, "fn": run_if_given}
