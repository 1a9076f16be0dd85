"""The dataset registry (train/datasets.py) and the pixel facts next to the decoder (vae_triton/images.py):
each dataset is one spec that the flags, the loaders and train.evaluate read, and CelebA's crop is
written in one place."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import evaluate
from train.config import RunConfig, build_parser, default_preset
from train.data import get_dataset
from train.datasets import DATASETS, dataset_spec
from vae_triton import images
from vae_triton.model import PRESETS

REPO = Path(__file__).resolve().parents[2]


def _choices(parser, dest):
    return next(a.choices for a in parser._actions if a.dest == dest)


def test_the_flags_offer_exactly_the_registered_datasets():
    assert tuple(_choices(build_parser(), "dataset")) == tuple(DATASETS)
    assert tuple(_choices(evaluate.build_parser(), "dataset")) == tuple(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        dataset_spec("mnist")


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_spec_is_consistent_with_what_a_run_gets(name, monkeypatch):
    spec = DATASETS[name]
    assert spec.name == name and spec.pixels.dataset == name
    assert images.pixel_spec(name) == spec.pixels  # the app finds the same pixel facts by name
    assert spec.preset in PRESETS
    cfg = RunConfig(dataset=name)
    assert cfg.hflip == spec.hflip and cfg.resolution == spec.resolution
    # A dataset whose size follows its images decides the preset once they are loaded.
    assert cfg.preset == (spec.preset if spec.resolution is not None else None)
    assert default_preset(name, (3, 64, 64)) == spec.preset
    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag: no words broken at hyphens
    help_text = build_parser().format_help()
    assert f"{name}: {spec.summary}" in help_text and f"{name}: {spec.splits}" in help_text


def test_a_fixed_shape_dataset_loads_in_that_shape_and_refuses_others():
    spec = DATASETS["dsprites"]
    ds = get_dataset("dsprites", "test", limit=8)
    assert ds.image_shape == spec.fixed_shape
    assert set(np.unique(ds.images[:])) <= {0, 255} and spec.pixels.binary
    with pytest.raises(ValueError, match="--channels"):
        RunConfig(dataset="dsprites", channels="3")
    with pytest.raises(ValueError, match="--resolution"):
        RunConfig(dataset="dsprites", resolution=32)


def test_the_apps_celeba_crop_is_the_training_crop():
    """Training crops CELEBA_PIXELS.crop px of the aligned 178×218 image; the app crops uploads of any
    size by crop_fraction of the shorter side: the same pixels on a CelebA-sized image."""
    pixels = images.CELEBA_PIXELS
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))
    trained = images.decode(photo, channels=3, size=pixels.size, crop=pixels.crop)
    served = images.decode(photo, channels=3, size=pixels.size, crop=pixels.crop_fraction)
    assert torch.equal(trained, served)
    # Written out: the centered 148-px box, resized to 64 (the common CelebA-64 recipe).
    box = (15, 35, 163, 183)
    ref = np.asarray(photo.crop(box).resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(trained.numpy(), ref)


def _number_literals(path: Path, value: int) -> list[int]:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == value]


def test_celebas_crop_is_written_once():
    found = {
        str(p.relative_to(REPO)): lines
        for package in ("train", "vae_triton")
        for p in sorted((REPO / package).rglob("*.py"))
        if (lines := _number_literals(p, images.CELEBA_PIXELS.crop))
    }
    assert list(found) == ["vae_triton/images.py"] and len(found["vae_triton/images.py"]) == 1, found


def test_an_unknown_name_gets_the_default_pixel_treatment():
    spec = images.pixel_spec("my-faces")
    assert spec.crop is None and spec.crop_fraction is None and spec.background == images.BACKGROUND
    assert spec.title == "my-faces" and images.pixel_spec(None).dataset == ""
