"""What every tab shares: the record a tab hands to the page (`Tab`), the models and page it is built
from (`Models`, `Page`), its input and output widgets, and how bad input becomes a readable gr.Error."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from .. import images as im
from .. import inference as inf
from .. import outputs, text

log = logging.getLogger("vae_triton.demo")

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only inside @spaces.GPU functions
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator is a no-op

    def gpu(fn):
        return fn


@dataclass
class Tab:
    """One tab's public event, as the page wires it.

    `fn` answers the button with `inputs` → `outputs` under `api_name`. The first `images` inputs are
    images: a new one re-runs the tab (skipped while one is empty). The tab also re-runs when the page's
    β is among its inputs and moves. `plane_point`: an output holding one image's numbers (a dict with
    "beta", "kl" and "recon_nll" in nats) that the page's rate–distortion plane marks when it changes.
    """

    api_name: str
    fn: Callable
    inputs: list
    outputs: list
    button: gr.Button
    images: int = 0
    plane_point: gr.JSON | None = None


@dataclass
class Models:
    """The β ladder the tabs use; `posterior`: the ladder the Posterior tab explores (None → `why_not`)."""

    ladder: inf.Ladder
    posterior: inf.Ladder | None = None
    why_not: str = ""

    def load(self, image: str, ladder: inf.Ladder | None = None):
        """An image path → the model's input tensor (1, C, H, W), preprocessed like the training data."""
        ladder = ladder or self.ladder
        cfg = ladder.config
        return im.to_model_input(im.open_image(image), cfg.image_channels, cfg.image_size, ladder.dataset)


@dataclass
class Page:
    """What a tab's layout reads: the models, the β component every tab uses, the example images, the
    keyword arguments that put an event under the model computations' concurrency limit, and every
    tab's handlers by name (`handlers.reconstruct`, ...)."""

    models: Models
    handlers: object
    beta: gr.Number
    examples: list[str]
    examples_label: str
    model_events: dict

    @property
    def first(self) -> str | None:
        return self.examples[0] if self.examples else None

    @property
    def second(self) -> str | None:
        return self.examples[min(4, len(self.examples) - 1)] if self.examples else None


def user_error(message: str) -> gr.Error:
    """A gr.Error for bad input: one line in the server log (a user's mistake is not a server fault, so
    no traceback), one toast on the page."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def user_errors(fn):
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


REPEAT_WINDOW_S = 10.0


def readable_upload_errors(component: gr.Image) -> gr.Image:
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


def image_input(label: str, value, height: int, elem_id: str | None = None) -> gr.Image:
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
    return readable_upload_errors(image)


def image_output(label: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, elem_classes=["pixelated"], **kwargs)


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
    folder = outputs.examples_folder()  # one per app process
    paths = []
    for i, image in enumerate(images):
        path = folder / f"sample-{i}.png"
        im.to_pil(image, scale=1).save(path, format="PNG")
        paths.append(str(path))
    return (
        paths,
        f"samples of the β={text.fmt_beta(ladder.betas[0])} model: no images of its training data "
        f"({text.data_name(ladder.rungs[0])}) ship with the app",
    )
