"""A user's own model is described truthfully: a 16-latent Bernoulli model trained with `python -m train`
on a folder of real digits, served with `--checkpoint RUN`. No sentence of the page speaks of sprites,
the card names the data from the model's metadata, and a one-model ladder has no β slider to drag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from test_app_client import REPO, serve_app

from demo import inference as inf
from demo import text

TRAIN = (
    "--dataset folder --resolution 28 --preset mlp --latent-dim 16 --likelihood bernoulli --steps 50 "
    "--batch-size 16 --eval-every 25 --eval-images 16 --no-progress"
).split()


EXAMPLES = REPO / "demo" / "models" / "digits2d" / "examples"  # real MNIST digits, thresholded


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A folder of real digits (the six bundled MNIST examples, each shifted by up to ±3 px: no download,
    no package beyond the dev tools) in train/ and test/; 50 training steps."""
    root = tmp_path_factory.mktemp("user")
    digits = [np.asarray(Image.open(p).convert("L")) for p in sorted(EXAMPLES.glob("digit-*.png"))]
    shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
    for split, count in (("train", 160), ("test", 40)):
        (root / "digits" / split).mkdir(parents=True)
        for i in range(count):
            dy, dx = shifts[(7 * i + (split == "test")) % len(shifts)]
            pixels = np.roll(digits[i % len(digits)], (dy, dx), axis=(0, 1))
            Image.fromarray(pixels).save(root / "digits" / split / f"{i:04d}-{i % len(digits)}.png")
    out = root / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VAE_TRITON_BACKEND": "torch"}
    args = [*TRAIN, "--data-dir", str(root / "digits"), "--cache-dir", str(root / "cache"), "--out", str(out)]
    subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, env=env, check=True, capture_output=True)
    return out


def page_texts(config: dict) -> list[str]:
    """Every string the page shows: Markdown, labels, infos, and the examples' labels."""
    found = []
    for component in config["components"]:
        props = component["props"]
        for key in ("value", "label", "info"):
            if isinstance(props.get(key), str):
                found.append(props[key])
    return found


def test_the_ladder_loader_describes_the_run_from_its_metadata(digits_run):
    ladder = inf.resolve_ladder(checkpoint=digits_run)
    rung = ladder.rungs[0]
    assert ladder.betas == [1.0] and rung.dataset == "folder" and rung.model.config.latent_dim == 16
    card = text.model_card(rung, ladder)
    assert "an image folder, 1×28² images" in card and "bernoulli decoder" in card
    intro = text.intro(ladder)
    assert "only one served" in intro and "move the β slider" not in intro
    assert "compare the grid" not in text.traverse_intro(ladder.betas)
    caption = text.traverse_caption([(0, 1.0)], [-3.0, 3.0], rung.dataset)
    assert "dSprites" not in caption and "rotation" not in caption
    # with metadata that names the data, the card says it
    rung.metadata["data_description"] = "my handwritten digits"
    assert "my handwritten digits, 1×28² images" in text.model_card(rung, ladder)


def test_the_served_page_never_speaks_of_sprites_and_has_no_beta_slider(digits_run, tmp_path):
    with serve_app("--checkpoint", str(digits_run)) as (url, log):
        config = httpx.get(f"{url}/config", timeout=30).json()
        shown = " ".join(page_texts(config)).lower()
        assert "sprite" not in shown, [t for t in page_texts(config) if "sprite" in t.lower()]
        assert "an image folder" in shown
        slider = next(c for c in config["components"] if c["props"].get("elem_id") == "beta-slider")
        assert slider["props"]["visible"] is False  # one rung: nothing to slide

        client = Client(url, verbose=False)
        digit = next((digits_run.parent / "digits" / "test").glob("*.png"))
        grey = tmp_path / "grey.png"  # a grey upload: the panel explains the Bernoulli decoder
        Image.fromarray(np.full((28, 28), 128, np.uint8)).save(grey)
        for image in (digit, grey):
            seen, recon, panel, numbers = client.predict(
                handle_file(str(image)), 1.0, 16, api_name="/reconstruct"
            )
            assert "sprite" not in panel.lower() and numbers["likelihood"] == "bernoulli"
        assert "grey pixels" in panel and "Bernoulli" in panel
        _, caption = client.predict(handle_file(str(digit)), 1.0, 8, 3.0, 5, api_name="/traverse")
        assert "sprite" not in caption.lower() and "rotation" not in caption
        assert "sprite" not in log.text().lower()
