"""The Posterior tab's new parts, through `gradio_client` against the app served in-process: the gap
split into its approximation and amortisation parts, q* in the figure, the IW chart's single draws and
what it says about draws above log p(x), the ELBO/IWAE model switch (tested with a copy of the digits
model until the IWAE-trained one is bundled; absent → no switch), the drawing's endpoint, and the
rate–distortion plane's scale with one point."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_app_client import REPO, STARTUP_TIMEOUT_S, free_port
from test_demo import OpenedHandlers

from demo import inference as inf
from demo import plots, text, ui

IWAE = "IWAE-trained (K = 5)"


@pytest.fixture(scope="module")
def iwae_copy(tmp_path_factory):
    """A stand-in for demo/models/digits2d_iwae: the digits model, its metadata naming the IWAE objective."""
    folder = tmp_path_factory.mktemp("models") / "digits2d_iwae"
    shutil.copytree(inf.POSTERIOR_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    config["metadata"].update(objective="iwae", iw_k=5)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@contextlib.contextmanager
def serve(iwae_dir):
    """The app as `python app.py` serves it (a subprocess, no TRITON_INTERPRET: the interpreter is not
    thread-safe and the page runs two events at once), with the IWAE-trained model looked for in
    `iwae_dir`. Yields (url, the app's config as /config serves it)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAE_TRITON_BACKEND")}
    env.update(
        HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1"
    )
    script = (
        "from pathlib import Path; from demo import inference as inf; "
        f"inf.POSTERIOR_IWAE_DIR = Path({str(iwae_dir)!r}); from demo.serve import main; "
        f"main(['--host', '127.0.0.1', '--port', '{port}'])"
    )
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                log.seek(0)
                if "Running on local URL" in log.read():
                    break
                assert proc.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.2)
            yield url, httpx.get(f"{url}/config", timeout=30).json()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def switched(iwae_copy):
    with serve(iwae_copy) as (url, config):
        yield url, config, Client(url, verbose=False)


def _params(client, name):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"][name]
    return [p["parameter_name"] for p in info["parameters"]]


def check_gaps(numbers):
    kl = numbers["kl_to_posterior"]
    assert numbers["approximation_gap"] >= 0 and numbers["amortisation_gap"] >= 0
    assert numbers["approximation_gap"] + numbers["amortisation_gap"] == pytest.approx(kl, abs=1e-3)
    assert numbers["log_px"] - numbers["best_elbo"] == pytest.approx(numbers["approximation_gap"], abs=1e-9)
    assert len(numbers["q_star_mean"]) == 2 and min(numbers["q_star_std"]) > 0


def test_the_switch_picks_the_model_and_every_answer_holds_the_gaps(switched):
    _, config, client = switched
    assert _params(client, "/posterior") == ["image", "model"]
    assert _params(client, "/posterior_sketch") == ["sketch", "model"]
    example = str(inf.POSTERIOR_DIR / "examples" / "digit-0.png")
    seen, latent, figure, identity, bounds, caption, elbo_numbers = client.predict(
        handle_file(example), api_name="/posterior"
    )  # the switch's default: the ELBO-trained model
    assert elbo_numbers["model"] == "digits2d"
    check_gaps(elbo_numbers)
    assert "approximation gap" in identity and "amortisation gap" in identity
    *_, iwae_numbers = client.predict(handle_file(example), IWAE, api_name="/posterior")
    assert iwae_numbers["model"] == "digits2d_iwae"
    check_gaps(iwae_numbers)
    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio checks the radio
        client.predict(handle_file(example), "GAN-trained", api_name="/posterior")
    # The tab says what a learner is looking at when switching.
    notes = " ".join(
        str(c["props"].get("value") or "") for c in config["components"] if c["type"] == "markdown"
    )
    assert "q(z|x) broadens relative to p(z|x)" in notes and "log p(x) rises" in notes
    radios = [c for c in config["components"] if c["props"].get("elem_id") == "posterior-model"]
    assert radios and [c[0] for c in radios[0]["props"]["choices"]] == ["ELBO-trained", IWAE]


def test_the_iw_chart_shows_single_draws_and_says_when_one_lies_above_log_px(switched):
    *_, client = switched
    example = str(inf.POSTERIOR_DIR / "examples" / "digit-0.png")
    *_, caption, numbers = client.predict(handle_file(example), api_name="/posterior")
    for b in numbers["iw_bounds"]:
        assert len(b["draws"]) == inf.IW_DRAWS
        assert b["draws_above_log_px"] == sum(v > numbers["log_px"] for v in b["draws"])
    assert numbers["iw_bounds"][-1]["bound"] == pytest.approx(np.mean(numbers["iw_bounds"][-1]["draws"]))
    above = sum(b["draws_above_log_px"] for b in numbers["iw_bounds"])
    if above:
        assert "lie above log p(x)" in caption and "holds in expectation" in caption
    assert "independent K = 1,000 bounds range from" in caption


def test_the_caption_explains_draws_above_log_px_and_says_so_when_there_are_none():
    base = {
        "log_px": -67.18,
        "iw_bounds": [{"K": 1000, "bound": -67.4, "sem": 0.2, "draws": [-65.93, -68.07]}],
    }
    base["iw_bounds"][0]["draws_above_log_px"] = 1
    caption = text.iw_caption(base)
    assert "1 of 2 at K = 1,000 lie above log p(x)" in caption and "narrower than p(z|x)" in caption
    base["iw_bounds"][0].update(draws=[-68.0, -68.07], draws_above_log_px=0)
    assert "None lies above log p(x) here" in text.iw_caption(base)


def test_a_drawing_through_the_client_and_an_empty_one(switched, tmp_path):
    *_, client = switched
    paper = np.full((280, 280, 3), 255, np.uint8)
    paper[60:220, 120:150] = 0  # a "1"
    drawing = tmp_path / "one.png"
    Image.fromarray(paper).save(drawing)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(drawing)), "id": None}
    seen, *_, numbers = client.predict(sketch, IWAE, api_name="/posterior_sketch")
    check_gaps(numbers)
    assert numbers["model"] == "digits2d_iwae"
    shown = np.asarray(Image.open(seen).convert("L"))[::4, ::4]  # what the model sees, shown 4×
    assert np.ptp(np.nonzero(shown > 128)[0]) + 1 == 20
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((280, 280, 3), 255, np.uint8)).save(blank)
    with pytest.raises(AppError, match="the sketch is empty"):
        client.predict({**sketch, "composite": handle_file(str(blank))}, api_name="/posterior_sketch")
    assert client.predict(4.0, 4, 1.0, 0, api_name="/sample") is not None  # the other tabs keep working


def test_without_the_iwae_model_there_is_no_switch():
    ladder = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    models, _ = inf.posterior_ladder(ladder, iwae_dir="/nonexistent/digits2d_iwae")
    assert models is not None and models.objectives == {}
    with serve(inf.POSTERIOR_DIR.parent / "digits2d_missing") as (url, config):
        client = Client(url, verbose=False)
        assert _params(client, "/posterior") == ["image"]
        assert not [c for c in config["components"] if c["props"].get("elem_id") == "posterior-model"]
        assert "Switch the model" not in json.dumps(config)
        example = str(inf.POSTERIOR_DIR / "examples" / "digit-1.png")
        check_gaps(client.predict(handle_file(example), api_name="/posterior")[-1])


def test_a_model_that_does_not_fit_is_not_offered(tmp_path):
    ladder = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    dsprites = sorted(inf.BUNDLED_DIR.iterdir())[0]  # another dataset, image size and latent size
    shutil.copytree(dsprites, tmp_path / "digits2d_iwae")
    models, _ = inf.posterior_ladder(ladder, iwae_dir=tmp_path / "digits2d_iwae")
    assert models.objectives == {}


def test_labels_come_from_the_metadata_or_the_folder(iwae_copy):
    iwae = inf.load_ladder(iwae_copy, "bundled").rungs[0]
    assert inf.objective_label(iwae) == IWAE
    elbo = inf.load_ladder(inf.POSTERIOR_DIR, "bundled").rungs[0]
    assert inf.objective_label(elbo) == "ELBO-trained"
    elbo.source = "/somewhere/digits2d_iwae"  # no objective in the metadata: the folder's name says
    assert inf.objective_label(elbo) == "IWAE-trained"


def test_the_handlers_draw_q_star_beside_q(iwae_copy):
    ladder = inf.load_ladder(inf.BUNDLED_DIR, "bundled")
    models, why = inf.posterior_ladder(ladder, iwae_dir=iwae_copy)
    h = OpenedHandlers(ui.make_handlers(ladder, models, why))
    _, _, figure, *_ = h.posterior_model(str(inf.POSTERIOR_DIR / "examples" / "digit-3.png"), IWAE)
    labels = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert labels == ["true posterior p(z|x)", "encoder q(z|x)", "best Gaussian q* for x"]


def test_the_rate_distortion_plane_keeps_a_readable_scale_with_one_point():
    ax = plots.rate_distortion_figure([(1.0, 6.74, 146.43)], current_beta=1.0).axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x1 - x0 >= plots.MIN_PLANE_SPAN - 1e-9 and y1 - y0 >= plots.MIN_PLANE_SPAN - 1e-9
    assert x0 <= 6.74 <= x1 and y0 <= 146.43 <= y1


# ---- in Chromium: draw a digit, switch the model, at desktop and phone widths ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 400])
def test_draw_a_digit_and_switch_the_model_in_chromium(switched, width):
    playwright = pytest.importorskip("playwright.sync_api")
    from test_app_browser import ARTIFACTS, CHROMIUM, open_tab, settle

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    url, *_ = switched
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_selector("[role=tab]")
        open_tab(page, "Posterior")
        page.wait_for_function(
            "document.querySelector('#posterior-identity').innerText.includes('amortisation')"
        )
        # An empty sketch: one message on this tab.
        page.locator("#posterior-sketch-button").click()
        page.wait_for_function("document.body.innerText.includes('the sketch is empty')")
        settle(page)
        # Pick the brush, draw a "7" on the canvas and explore it.
        page.locator("#posterior-sketch button[aria-label='Brush']").first.click()
        canvas = page.locator("#posterior-sketch canvas").last
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x0 + 0.3 * w, y0 + 0.25 * h)
        page.mouse.down()
        page.mouse.move(x0 + 0.7 * w, y0 + 0.25 * h, steps=10)
        page.mouse.move(x0 + 0.45 * w, y0 + 0.8 * h, steps=10)
        page.mouse.up()
        page.locator("#posterior-sketch-button").click()
        page.wait_for_selector("#posterior-seen img")
        page.wait_for_function(
            "document.querySelector('#posterior-identity').innerText.includes('amortisation')"
        )
        settle(page)
        page.screenshot(path=str(ARTIFACTS / f"demo-posterior-sketch-{width}px.png"), full_page=True)
        # Switch to the IWAE-trained model: the identity table is recomputed for it.
        before = page.locator("#posterior-identity").inner_text()
        page.locator("#posterior-model").get_by_text(IWAE).click()
        page.wait_for_function(
            "t => document.querySelector('#posterior-identity').innerText !== t", arg=before
        )
        settle(page)
        page.screenshot(path=str(ARTIFACTS / f"demo-posterior-iwae-{width}px.png"), full_page=True)
        with Image.open(ARTIFACTS / f"demo-posterior-iwae-{width}px.png") as shot:
            assert shot.width == width
        browser.close()
