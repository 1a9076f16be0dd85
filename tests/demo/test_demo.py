"""The demo without a server: image preparation, the model ladder, and the handlers behind each event.

Tiny untrained dSprites-preset models stand in for trained ones (the handlers' wiring and numbers are
checked against torch.distributions and train.data, not against how good the models are).
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence
from torch.distributions import Normal, kl_divergence

from demo import images as im
from demo import inference as inf
from demo import outputs, text, ui
from demo.make_examples import EXAMPLES
from demo.tabs import interpolate, posterior
from train.data import dsprites_images
from vae_triton.images import decode
from vae_triton.metrics import importance_weighted
from vae_triton.model import VAE, VAEConfig

EXAMPLE = sorted(inf.EXAMPLES_DIR.glob("dsprites-*.png"))


def make_run(
    folder: Path, beta: float, *, preset="dsprites", dataset="dsprites", steps=10, seed=None
) -> Path:
    """A run directory as `python -m train` leaves it (weights + config.json with metadata)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = VAE(VAEConfig.preset(preset))
    with torch.no_grad():  # an untrained encoder sits on the prior; give q(z|x) a definite shape
        head = model.to_params[-1]
        d = model.config.latent_dim
        head.bias[:d] = torch.randn(d)
        head.bias[d:] = -2.0
    meta = {"beta": beta, "dataset": dataset, "steps": steps, "batch_size": 8, "finished": True}
    model.save_pretrained(folder, metadata=meta)
    return folder


def make_ladder(root: Path, betas=(1.0, 4.0)) -> Path:
    for b in betas:
        make_run(root / f"beta{b:g}", b)
    return root


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    # The demo's numbers come from the ops' torch path here (the Triton kernels have their own tests):
    # under TRITON_INTERPRET the IW decode of K samples would take seconds per call.
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory) -> Path:
    return make_ladder(tmp_path_factory.mktemp("ladder"))


@pytest.fixture(scope="module")
def ladder(ladder_dir) -> inf.Ladder:
    return inf.resolve_ladder(checkpoint=ladder_dir)


def opened(value):
    """A handler's PNG output (a file path, see outputs.png_file) as the PIL image it holds."""
    if isinstance(value, str) and value.endswith(".png") and Path(value).parent == outputs.png_dir():
        with Image.open(value) as img:
            return img.copy()
    return value


class OpenedHandlers:
    """The handlers with their PNG file outputs opened, so tests compare pixels."""

    def __init__(self, handlers: ui.Handlers):
        self._handlers = handlers

    def __getattr__(self, name):
        fn = getattr(self._handlers, name)

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            return tuple(opened(v) for v in out) if isinstance(out, tuple) else opened(out)

        return call


@pytest.fixture(scope="module")
def handlers(ladder) -> OpenedHandlers:
    return OpenedHandlers(ui.make_handlers(ladder))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---- images in ----------------------------------------------------------------------------------
def test_examples_are_the_dsprites_renders_pixel_for_pixel():
    assert len(EXAMPLE) == len(EXAMPLES) >= 4
    for path in EXAMPLE:
        factors = EXAMPLES[path.stem.removeprefix("dsprites-")]
        x = im.to_model_input(im.open_image(path), 1, 64, "dsprites")
        expected = torch.from_numpy(dsprites_images([list(factors)])).float() / 255.0
        assert torch.equal(x, expected), path.name


def test_celeba_uploads_get_the_training_crop_and_resize():
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    img = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8), "RGB")  # aligned CelebA size
    x = im.to_model_input(img, 3, 64, "celeba")
    expected = decode(img, channels=3, size=64, crop=148).float()[None] / 255.0  # what the CelebA cache holds
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK"])
@pytest.mark.parametrize("size", [(300, 17), (40, 1000), (64, 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_mode_and_size_becomes_the_model_shape(mode, size, channels):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    img = (
        rgb.convert("P")
        if mode == "P"
        else rgb.convert("L").convert(mode)
        if mode in ("I;16", "I", "F")
        else (rgb.convert(mode))
    )
    # Through a real file round trip where the format allows it (what an upload is).
    if mode not in ("I", "F", "CMYK"):
        img = im.open_image(png_bytes(img))
    x = im.to_model_input(img, channels, 64, "dsprites")
    assert x.shape == (1, channels, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0


def test_transparent_pixels_take_the_datasets_background():
    clear = Image.new("RGBA", (50, 80), (255, 0, 0, 0))
    assert im.to_model_input(clear, 1, 64, "dsprites").max().item() == 0.0  # sprites live on black
    assert im.to_model_input(clear, 3, 64, "celeba").min().item() == 1.0  # faces: white


def test_16_bit_images_are_scaled_not_clipped():
    arr = np.full((64, 64), 65535, dtype=np.uint16)
    arr[:, 32:] = 32768
    x = im.to_model_input(Image.fromarray(arr), 1, 64, "dsprites")
    assert x[0, 0, :, :31].min().item() == 1.0
    assert abs(x[0, 0, :, 33:].mean().item() - 0.5) < 0.01


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "not an image"),
        (b"hello, this is a text file\n" * 10, "not an image"),
        (lambda: png_bytes(Image.new("L", (64, 64), 7))[:60], "damaged"),  # truncated PNG
    ],
)
def test_corrupt_uploads_raise_input_error(payload, why):
    data = payload() if callable(payload) else payload
    with pytest.raises(im.InputError, match=why):
        im.open_image(data)
    with pytest.raises(im.InputError, match="no image"):
        im.open_image(None)


def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(im.InputError, match="too large"):
        im.open_image(png_bytes(Image.new("L", (40, 40))))  # 1600 px: over the limit, under twice it
    with pytest.raises(im.InputError, match="too large"):
        im.open_image(png_bytes(Image.new("L", (64, 64))))  # 4096 px: PIL's own hard error


# ---- the ladder ---------------------------------------------------------------------------------
def test_a_folder_of_runs_is_a_ladder_and_beta_snaps_to_the_nearest(ladder, ladder_dir):
    assert ladder.origin == "checkpoint" and ladder.betas == [1.0, 4.0] and not ladder.notices
    assert [ladder.pick(b).beta for b in (0.0, 1.0, 2.4, 2.5, 2.6, 4.0, 100)] == [1, 1, 1, 1, 4, 4, 4]
    for bad in ("x", None, float("nan")):
        with pytest.raises(inf.InputError, match="beta"):
            ladder.pick(bad)
    one = inf.resolve_ladder(checkpoint=ladder_dir / "beta4")
    assert one.betas == [4.0] and one.dataset == "dsprites"


def test_unfinished_and_broken_runs_are_skipped_with_a_notice(tmp_path):
    make_run(tmp_path / "good", 2.0)
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "run_config.json").write_text("{}")
    broken = make_run(tmp_path / "broken", 8.0)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    lad = inf.load_ladder(tmp_path, "checkpoint")
    assert lad.betas == [2.0]
    notes = " ".join(lad.notices)
    assert "training: no model.safetensors" in notes and "broken: not loaded" in notes


def test_models_of_different_data_are_not_one_ladder(tmp_path):
    make_run(tmp_path / "a", 1.0)
    make_run(tmp_path / "b", 2.0, preset="small", dataset="folder")
    with pytest.raises(ValueError, match="not one ladder"):
        inf.load_ladder(tmp_path, "checkpoint")


def test_two_runs_at_one_beta_keep_the_longer_one(tmp_path):
    make_run(tmp_path / "short", 4.0, steps=10)
    make_run(tmp_path / "long", 4.0, steps=500)
    lad = inf.load_ladder(tmp_path, "checkpoint")
    assert lad.betas == [4.0] and Path(lad.rungs[0].source).name == "long"
    assert any("short ignored" in n for n in lad.notices)


def test_an_explicit_checkpoint_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        inf.resolve_ladder(checkpoint=tmp_path / "nope")
    lad = inf.resolve_ladder(checkpoint=tmp_path)  # there but empty: the bundled models, with a notice
    assert lad.origin == "bundled" and "no model could be loaded" in lad.notices[0]


def test_an_unreachable_hub_repo_falls_back_to_bundled_with_a_notice(ladder_dir):
    start = time.perf_counter()
    lad = inf.resolve_ladder(hub_repo="nobody-here/no-such-vae", bundled_dir=ladder_dir)
    assert time.perf_counter() - start < 10  # offline: no retry loop
    assert lad.origin == "bundled" and lad.betas == [1.0, 4.0]
    assert "nobody-here/no-such-vae" in lad.notices[0] and "bundled" in lad.notices[0]
    assert "nobody-here/no-such-vae" in text.banner(lad)


def test_a_hub_repo_is_loaded_when_it_can_be(ladder_dir, monkeypatch):
    monkeypatch.setattr(inf, "download_hub_ladder", lambda repo: ladder_dir)
    lad = inf.resolve_ladder(hub_repo="someone/vae-ladder", bundled_dir=None)
    assert lad.origin == "hub" and lad.location == "huggingface.co/someone/vae-ladder" and lad.betas == [1, 4]


def test_nothing_to_load_gives_a_loud_untrained_banner(tmp_path):
    lad = inf.resolve_ladder(bundled_dir=tmp_path)
    assert lad.untrained and lad.origin == "untrained"
    assert "UNTRAINED" in text.banner(lad) and "RANDOM WEIGHTS" in text.banner(lad)


def test_the_default_is_the_bundled_dsprites_ladder():
    lad = inf.resolve_ladder()
    assert lad.origin == "bundled" and Path(lad.location) == inf.BUNDLED_DIR
    assert {1.0, 2.0, 4.0, 8.0} <= set(lad.betas), f"bundled ladder incomplete: {lad.betas} {lad.notices}"
    for rung in lad.rungs:
        assert rung.dataset == "dsprites" and rung.metadata.get("finished") is True
        assert rung.metadata.get("steps", 0) > 0 and "eval_recon" in rung.metadata


# ---- handlers -----------------------------------------------------------------------------------
def _encode(rung, path):
    x = im.to_model_input(im.open_image(path), 1, 64, "dsprites")
    with torch.no_grad():
        mu, logvar = rung.model.encode(x)
    return x, mu, logvar


def test_reconstruct_reports_every_term_of_the_identity(handlers, ladder):
    path = str(EXAMPLE[0])
    k = 512
    model_view, recon, panel, stats = handlers.reconstruct(path, 3.9, k)
    rung = ladder.pick(4.0)
    assert stats["beta"] == 4.0 and stats["iw_samples"] == k
    x, mu, logvar = _encode(rung, path)
    q = Normal(mu[0].double(), (0.5 * logvar[0].double()).exp())
    prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
    kl = kl_divergence(q, prior).sum().item()
    assert stats["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-4)
    assert stats["beta_kl"] == pytest.approx(4.0 * stats["kl"])
    assert stats["elbo"] == pytest.approx(-(stats["recon_nll"] + stats["kl"]), abs=1e-3)
    assert stats["gap"] == pytest.approx(stats["iw_log_likelihood"] - stats["elbo"], abs=1e-3)

    assert stats["kl"] > 1.0  # the test model's posterior is informative, so the numbers mean something
    # The recon term, by independent Monte Carlo with torch.distributions and BCE-with-logits.
    with torch.no_grad():
        z = q.sample((k,)).float()
        logits = rung.model.decode(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
            (1, 2, 3)
        )
    recon_mc, recon_se = -log_px_z.mean().item(), log_px_z.std().item() / math.sqrt(k)
    assert abs(stats["recon_nll"] - recon_mc) < 6 * recon_se + 1e-3
    # The IW bound is the selected model's, for this image, with the panel's K and seed.
    with torch.no_grad():
        est = importance_weighted(rung.model, x, k, generator=torch.Generator().manual_seed(0))
    assert stats["iw_log_likelihood"] == pytest.approx(est.log_likelihood.item(), abs=1e-4)
    assert stats["iw_log_likelihood"] >= stats["elbo"] - 3 * recon_se  # a tighter bound than the ELBO

    assert isinstance(model_view, Image.Image) and model_view.size == (256, 256) and model_view.mode == "L"
    assert np.array_equal(np.asarray(model_view), np.asarray(im.to_pil(x[0])))
    with torch.no_grad():
        expected_recon = torch.sigmoid(rung.model.decode(mu))[0]
    assert np.array_equal(np.asarray(recon), np.asarray(im.to_pil(expected_recon)))
    for words in ("ELBO", "log p(x)", "gap", "β·KL", "KL[q(z|x) ‖ p(z|x)]"):
        assert words in panel
    # Seeded: the same request gives the same numbers.
    assert handlers.reconstruct(path, 4.0, k)[3] == stats


def test_interpolate_gives_a_strip_and_a_bouncing_gif(handlers, ladder):
    a, b = str(EXAMPLE[0]), str(EXAMPLE[3])
    strip, gif, gif_again = handlers.interpolate(a, b, 1.0, 6, "spherical")
    assert gif == gif_again and Path(gif).suffix == ".gif"
    assert strip.size == (6 * 128 + 5 * 2, 128)
    with Image.open(gif) as anim:  # forth and back; PIL merges repeated frames, adding their durations
        durations = [anim.info["duration"] for _ in ImageSequence.Iterator(anim)]
        assert anim.size == (256, 256) and sum(durations) == (2 * 6 - 2) * interpolate.GIF_FRAME_MS
    rung = ladder.pick(1.0)
    _, mu_a, _ = _encode(rung, a)
    with torch.no_grad():
        first = torch.sigmoid(rung.model.decode(mu_a))[0]
    assert np.array_equal(np.asarray(strip.crop((0, 0, 128, 128))), np.asarray(im.to_pil(first, scale=2)))
    with pytest.raises(gr.Error, match="mode"):
        handlers.interpolate(a, b, 1.0, 6, "cubic")
    with pytest.raises(gr.Error, match="frames"):
        handlers.interpolate(a, b, 1.0, 1, "linear")


def test_a_png_returned_again_survives_the_pruning_of_old_files(tmp_path, monkeypatch):
    # The failure this guards: a request whose picture matched an old file got that file's path back,
    # and the pruning of the same call (or a parallel one) deleted it before Gradio copied it.
    monkeypatch.setattr(outputs, "PNG_DIR", tmp_path)
    pictures = [Image.new("L", (4, 4), shade) for shade in range(5)]
    hour_ago = time.time() - 3600
    for age_rank, picture in enumerate(pictures):  # pictures[0] the oldest
        os.utime(outputs.png_file(picture), (hour_ago + age_rank, hour_ago + age_rank))
    monkeypatch.setattr(outputs, "KEEP_PNG_FILES", 2)
    again = outputs.png_file(pictures[0])  # the oldest, beyond the newest 2
    outputs.png_file(Image.new("L", (4, 4), 99))  # a new picture prunes
    assert Path(again).exists() and np.array_equal(np.asarray(opened(again)), np.asarray(pictures[0]))
    assert len(list(tmp_path.glob("*.png"))) == 2  # the new one and `again`; the old rest are gone
    assert not list(tmp_path.glob(".*.tmp"))


def test_sample_is_seeded_and_temperature_zero_decodes_the_prior_mean(handlers, ladder):
    one = handlers.sample(4.0, 5, 1.0, 7)
    assert np.array_equal(np.asarray(one), np.asarray(handlers.sample(4.0, 5, 1.0, 7)))
    assert not np.array_equal(np.asarray(one), np.asarray(handlers.sample(4.0, 5, 1.0, 8)))
    assert one.size == (3 * 128 + 2 * 4, 2 * 128 + 4)  # 5 tiles in rows of 3
    cold = np.asarray(handlers.sample(1.0, 4, 0.0, 3))
    with torch.no_grad():
        centre = torch.sigmoid(ladder.pick(1.0).model.decode(torch.zeros(1, 10)))[0]
    tile = np.asarray(im.to_pil(centre, scale=2))
    for r in range(2):
        for c in range(2):
            assert np.array_equal(cold[r * 132 : r * 132 + 128, c * 132 : c * 132 + 128], tile)
    for bad in ({"n": 0}, {"n": 65}, {"temperature": -1}, {"seed": "abc"}):
        args = {"beta": 1.0, "n": 4, "temperature": 1.0, "seed": 0} | bad
        with pytest.raises(gr.Error):
            handlers.sample(**args)


def test_traverse_ranks_dimensions_by_their_kl(handlers, ladder):
    path = str(EXAMPLE[2])
    picture, caption = handlers.traverse(path, 4.0, 4, 2.0, 5)
    width, height = picture.size  # a label column left and a row of values below, in a 25 px font
    assert 100 < width - (5 * 128 + 4 * 2) < 300 and height == 4 * 128 + 3 * 2 + 2 * 25
    _, mu, logvar = _encode(ladder.pick(4.0), path)
    q = Normal(mu[0], (0.5 * logvar[0]).exp())
    per_dim = kl_divergence(q, Normal(torch.zeros(10), torch.ones(10)))
    top = torch.argsort(per_dim, descending=True)[:4].tolist()
    rows, ranked, values = inf.traverse_image(ladder.pick(4.0), _encode(ladder.pick(4.0), path)[0], 4, 2.0, 5)
    assert [d for d, _ in ranked] == top
    assert values == pytest.approx([-2, -1, 0, 1, 2])
    assert "ranked by their KL" in caption
    with pytest.raises(gr.Error, match="num_dims"):
        handlers.traverse(path, 4.0, 0, 2.0, 5)


def test_handlers_turn_bad_uploads_into_gr_error(handlers, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    for call in (
        lambda: handlers.reconstruct(str(bad), 1.0, 16),
        lambda: handlers.interpolate(str(EXAMPLE[0]), str(bad), 1.0, 4, "linear"),
        lambda: handlers.traverse(str(bad), 1.0, 3, 2.0, 3),
        lambda: handlers.reconstruct(None, 1.0, 16),
        lambda: handlers.reconstruct(str(EXAMPLE[0]), 1.0, 10**6),
        lambda: handlers.reconstruct(str(EXAMPLE[0]), 1.0, 2.5),
        lambda: handlers.reconstruct(str(EXAMPLE[0]), 1.0, None),
    ):
        with pytest.raises(gr.Error):
            call()
    assert handlers.reconstruct(str(EXAMPLE[0]), 1.0, 16)[3]["beta"] == 1.0  # still works after


def test_the_card_follows_beta_and_the_slider_snaps(handlers, ladder):
    # While the slider moves (dragged or typed; raw values, Gradio's range check is off for this event):
    # the tabs' β, the card and the plane follow the nearest trained β.
    assert handlers.follow_beta(3.0)[0] == 4.0 and handlers.follow_beta(1.2)[0] == 1.0
    assert handlers.follow_beta("3")[0] == 4.0
    beta, card, _ = handlers.follow_beta(3.5)
    assert beta == 4.0 and "β = 4" in card and "dSprites" in card and "10 steps" in card
    # Out of range or not a number: a clear warning, the nearest end of the ladder, never an error.
    for typed, expected in ((100, 4.0), (-7, 1.0), ("abc", 1.0), (float("nan"), 1.0)):
        with pytest.warns(UserWarning, match="β"):
            assert handlers.follow_beta(typed)[0] == expected
    # Let go (end of a drag, or the number box left): the slider itself moves onto the trained β.
    assert handlers.snap(3.0) == 4.0 and handlers.snap(1.2) == 1.0 and handlers.snap(100) == 4.0
    assert handlers.snap(4.0) == gr.skip() and handlers.snap("abc") == 1.0
    # The commit's toast reads the raw value from the release event: the slider's own value may already
    # be clamped to the end of the range by then.
    with pytest.warns(UserWarning, match="β = 100 is outside"):
        handlers.warn_outside(4.0, SimpleNamespace(_data=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handlers.warn_outside(4.0, SimpleNamespace(_data=4.0))  # in range: silent


def test_non_dsprites_ladders_use_model_samples_as_examples(tmp_path):
    make_run(tmp_path / "faces", 1.0, preset="small", dataset="celeba")
    lad = inf.resolve_ladder(checkpoint=tmp_path)
    paths, label = ui.example_paths(lad)
    assert len(paths) == 6 and "samples" in label and "(CelebA)" in label
    for p in paths:
        with Image.open(p) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    x = im.to_model_input(im.open_image(paths[0]), 3, 32, "celeba")
    assert x.shape == (1, 3, 32, 32)


def test_the_card_shows_what_train_evaluate_measured(tmp_path):
    from train.evaluate import main as evaluate

    run = make_run(tmp_path / "b2", 2.0, steps=123)
    flags = ["--iw-samples", "4", "--num-images", "4", "--latent-images", "32", "--batch-size", "4"]
    assert evaluate(["--checkpoint", str(run), *flags, "--no-progress"]) in (0, None)
    lad = inf.resolve_ladder(checkpoint=tmp_path)
    ev = lad.rungs[0].evaluation
    assert ev["iw_samples"] == 4 and ev["split"] == "test" and "mig" in ev
    card = text.model_card(lad.rungs[0], lad)
    assert f"log p(x) ≥ {text.nats(ev['iw_log_likelihood'])} (IW, K=4)" in card
    assert "MIG" in card and "123 steps" in card


def test_a_model_without_beta_metadata_is_flagged(tmp_path):
    VAE(VAEConfig.preset("dsprites")).save_pretrained(tmp_path / "bare", metadata={})
    lad = inf.resolve_ladder(checkpoint=tmp_path / "bare")
    assert lad.betas == [1.0] and any("no β" in n for n in lad.notices)


# ---- the Posterior tab ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ladder_2d(tmp_path_factory) -> inf.Ladder:
    """A 2-latent digits-sized MLP (untrained, q given a definite shape) with its own example images."""
    folder = tmp_path_factory.mktemp("two") / "run"
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset("mlp", latent_dim=2))
    model.save_pretrained(folder, metadata={"beta": 1.0, "dataset": "folder", "steps": 10})
    (folder / "examples").mkdir()
    for i in range(2):
        pixels = (np.random.default_rng(i).random((28, 28)) > 0.7).astype(np.uint8) * 255
        Image.fromarray(pixels, "L").save(folder / "examples" / f"digit-{i}.png")
    return inf.resolve_ladder(checkpoint=folder)


def test_the_posterior_tab_explores_a_two_latent_model(ladder_2d):
    models, why_not = inf.posterior_ladder(ladder_2d)
    assert models is ladder_2d and why_not == ""
    examples, label = ui.example_paths(models)
    assert [Path(p).name for p in examples] == ["digit-0.png", "digit-1.png"] and "held-out" in label
    h = OpenedHandlers(ui.make_handlers(ladder_2d, models, why_not))
    seen, latent, figure, identity, bounds, caption, numbers = h.posterior(examples[0], 1.0)
    assert seen.size == (112, 112) and latent.size == (2 * 15 * 28,) * 2
    assert hasattr(figure, "savefig") and hasattr(bounds, "savefig")  # matplotlib figures for gr.Plot
    assert abs(numbers["identity_residual"]) < 1e-3 and numbers["kl_to_posterior"] > 0
    assert "log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)]" in identity and "Jensen" in caption
    # IW bounds climb towards log p(x) from below, within Monte Carlo error.
    iw = numbers["iw_bounds"]
    assert [b["K"] for b in iw] == list(inf.IW_KS)
    for lo, hi in zip(iw, iw[1:], strict=False):
        assert hi["bound"] >= lo["bound"] - 3 * math.hypot(lo["sem"] or 0, hi["sem"] or 0)
    assert all(b["bound"] <= numbers["log_px"] + 3 * (b["sem"] or 0) + 1e-3 for b in iw)
    assert iw[0]["bound"] == pytest.approx(numbers["elbo"], abs=4 * iw[0]["sem"] + 1e-3)  # K = 1: the ELBO


def test_clicking_the_latent_map_decodes_the_code_under_the_pointer(ladder_2d):
    h = ui.make_handlers(ladder_2d, ladder_2d, "")
    rung = ladder_2d.rungs[0]
    side = 15 * 28 * posterior.MAP_SCALE
    tile = side // 15
    # A click in the tile of row 2, column 11: the code exactly under the pointer (pixel centres map
    # linearly onto [−3, 3]², z₂ growing upwards) ...
    px, py = 11 * tile + tile // 2, 2 * tile + tile // 2
    event = gr.SelectData(None, {"index": [px, py], "value": None})
    decoded, caption = h.decode_click(1.0, event)
    z = torch.tensor([[-3 + (px + 0.5) / side * 6, 3 - (py + 0.5) / side * 6]])
    with torch.no_grad():
        expected = rung.model.output_to_image(rung.model.decode(z))[0]
        centre = torch.tensor([[-3 + 11.5 * 6 / 15, 3 - 2.5 * 6 / 15]])
        tile_image = rung.model.output_to_image(rung.model.decode(centre))[0]
    assert np.array_equal(np.asarray(opened(decoded)), np.asarray(im.to_pil(expected)))
    # ... and the map shows, in that tile, the code at the tile's centre.
    torch.testing.assert_close(inf.latent_map(rung)[2 * 28 : 3 * 28, 11 * 28 : 12 * 28], tile_image[0])
    assert "z = (+1.60, +2.00)" in caption
    assert inf.map_pixel_to_z(0, 0, side, side)[0] == pytest.approx(-3 + 3 / side)


def test_the_posterior_tab_says_why_it_is_off_for_other_latent_sizes(ladder, tmp_path):
    models, why_not = inf.posterior_ladder(ladder)  # a 10-latent checkpoint ladder
    assert models is None and "2 latent dimensions; this one has 10" in why_not
    h = ui.make_handlers(ladder, models, why_not)
    with pytest.raises(gr.Error, match="2 latent dimensions"):
        h.posterior(str(EXAMPLE[0]))
    # The bundled 10-latent dSprites ladder falls back to the bundled 2-latent model instead.
    bundled = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    two = tmp_path / "two"
    VAE(VAEConfig.preset("mlp", latent_dim=2)).save_pretrained(two, metadata={"beta": 1.0})
    models, why_not = inf.posterior_ladder(bundled, two)
    assert models is not None and models.config.latent_dim == 2 and why_not == ""


def test_rate_distortion_plane_marks_the_rung_and_the_image(handlers, ladder):
    assert inf.rate_distortion_points(ladder) == []  # the test ladder has no held-out numbers
    bundled = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    points = inf.rate_distortion_points(bundled)
    assert [p[0] for p in points] == bundled.betas
    for (_, rate, dist), rung in zip(points, bundled.rungs, strict=True):
        assert (rate, dist) == (rung.evaluation["kl"], rung.evaluation["recon_nll"])  # held-out (test)
    h = ui.make_handlers(bundled)
    figure = h.rate_distortion(4.0, {"beta": 4.0, "kl": 12.0, "recon_nll": 70.0})
    ax = figure.axes[0]
    assert any(list(line.get_xdata()) == [12.0] and list(line.get_ydata()) == [70.0] for line in ax.lines)
    # Lines of equal ELBO: slope −1 (D + R = const).
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert dashed and all(np.allclose(np.diff(ln.get_ydata()), -np.diff(ln.get_xdata())) for ln in dashed)
    # An image just outside the ladder's frame widens it (the whole marker shows); one far off is pinned
    # to the border with its numbers, so the curve is not squashed.
    near = h.rate_distortion(1.0, {"beta": 1.0, "kl": 25.0, "recon_nll": 4.0}).axes[0]
    y0, y1 = near.get_ylim()
    assert y0 < 4.0 < y1 and any(list(ln.get_ydata()) == [4.0] for ln in near.lines)
    far = h.rate_distortion(1.0, {"beta": 1.0, "kl": 500.0, "recon_nll": 3000.0}).axes[0]
    assert far.get_ylim()[1] < 3000 and "off the plane" in far.get_legend().get_texts()[0].get_text()
