"""The Posterior tab's drawing: preprocessed as MNIST was made (the bounding box scaled into a 20×20 box
keeping its aspect ratio, centred by its centre of mass in 28×28), checked against real MNIST digits
(the bundled model's held-out examples), and the empty sketch answered with a message."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from test_demo import OpenedHandlers

from demo import images as im
from demo import inference as inf
from demo import ui

DIGITS = sorted((Path(inf.POSTERIOR_DIR) / "examples").glob("*.png"))


def drawn(digit: np.ndarray, scale: int, at: tuple[int, int], canvas: int = 400) -> np.ndarray:
    """An MNIST digit as someone would draw it: black ink on white paper, `scale`× larger, anywhere."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale,) * 2, Image.Resampling.BICUBIC))
    paper = np.full((canvas, canvas), 255, np.uint8)
    paper[at[0] : at[0] + 28 * scale, at[1] : at[1] + 28 * scale] = 255 - big
    return np.repeat(paper[..., None], 3, axis=2)  # the Sketchpad's RGB composite


def centre_of_mass(a: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(a.shape)
    return np.array([(ys * a).sum(), (xs * a).sum()]) / a.sum()


@pytest.mark.parametrize("path", DIGITS, ids=lambda p: p.stem)
def test_a_drawn_mnist_digit_comes_back_as_mnist_made_it(path):
    digit = np.asarray(Image.open(path).convert("L"))
    # MNIST itself: the ink's bounding box is 20 px on its longer side, its centre of mass near (14, 14).
    rows, cols = np.nonzero(digit > 25)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)
    assert np.abs(centre_of_mass(digit.astype(float)) - 14.0).max() <= 1.0
    seen = np.asarray(im.sketch_to_image({"composite": drawn(digit, 9, (31, 77))}))
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    rows, cols = np.nonzero(seen > 255 * im.INK)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 == 20  # the longer side fills the 20×20 box
    assert np.abs(centre_of_mass(seen.astype(float)) - 14.0).max() <= 0.5  # centred by mass, to a pixel
    # The same digit, near enough pixel by pixel (resampling twice blurs the strokes a little).
    assert np.abs(seen / 255.0 - digit / 255.0).mean() < 0.08


def test_aspect_ratio_is_kept_and_the_paper_can_be_dark():
    paper = np.zeros((300, 300), np.uint8)
    paper[40:240, 200:250] = 255  # a light bar 200 tall, 50 wide on dark paper
    seen = np.asarray(im.sketch_to_image(paper))
    rows, cols = np.nonzero(seen > 128)
    assert np.ptp(rows) + 1 == 20 and np.ptp(cols) + 1 == 5
    assert np.abs(centre_of_mass(seen.astype(float)) - 14.0).max() <= 0.5


def test_transparent_drawings_are_read_on_white():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[20:60, 30:50] = (0, 0, 0, 255)
    seen = np.asarray(im.sketch_to_image(Image.fromarray(rgba, "RGBA")))
    assert seen.max() == 255 and np.ptp(np.nonzero(seen > 128)[0]) + 1 == 20


@pytest.mark.parametrize(
    "sketch",
    [None, {"composite": None, "layers": []}, {"composite": np.full((280, 280, 3), 255, np.uint8)}],
    ids=["nothing", "no composite", "blank paper"],
)
def test_an_empty_sketch_is_one_clear_message(sketch):
    with pytest.raises(im.InputError, match="the sketch is empty: draw a digit"):
        im.sketch_to_image(sketch)


def test_not_an_image_is_one_clear_message():
    with pytest.raises(im.InputError, match="must be an image"):
        im.sketch_to_image(np.zeros((4, 4, 4, 4)))


@pytest.fixture(scope="module")
def digits_handlers():
    ladder = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    models, why_not = inf.posterior_ladder(ladder, iwae_dir=Path("/nonexistent"))
    return models, OpenedHandlers(ui.make_handlers(ladder, models, why_not))


def test_the_drawing_goes_through_the_posterior_as_an_upload_would(digits_handlers, tmp_path):
    models, h = digits_handlers
    digit = np.asarray(Image.open(DIGITS[0]).convert("L"))
    seen, *_, numbers = h.posterior_sketch({"composite": drawn(digit, 9, (31, 77))})
    # What the model sees is shown: the 28×28 digit as MNIST made it (4× larger on the page).
    assert seen.size == (112, 112)
    expected = im.sketch_to_image({"composite": drawn(digit, 9, (31, 77))})
    assert np.array_equal(np.asarray(seen.convert("L"))[::4, ::4], np.asarray(expected))
    upload = tmp_path / "mnist.png"
    expected.save(upload)
    *_, from_upload = h.posterior(str(upload))
    assert numbers["log_px"] == pytest.approx(from_upload["log_px"], abs=1e-9)
    with pytest.raises(gr.Error, match="the sketch is empty"):
        h.posterior_sketch({"composite": np.full((280, 280, 3), 255, np.uint8)})
    # The other tabs keep working after it.
    assert h.sample(4.0, 4, 1.0, 0) is not None
