"""The Divergence and Fit tabs: their handlers as plain functions (numbers against the closed form and the
quadrature), and every control through `gradio_client` on the app as a user starts it, including bad
input that fails on its own tab only."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image
from test_app_client import serve_app

from demo import inference as inf
from demo import lecture as lec
from demo import text, ui
from demo.tabs import divergence, fit
from demo.tabs.common import Models

SINGLE = (1.0, 0.3, 1.2, 0.0, 0.0, 1.0), (1.0, -1.0, 0.7, 0.0, 0.0, 1.0)  # p, q: one Gaussian each


@pytest.fixture(scope="module")
def handlers():
    return ui.make_handlers(inf.resolve_ladder())  # the bundled models


def test_divergence_of_two_gaussians_is_the_closed_form(handlers):
    p, q = SINGLE
    densities, jensen, table, n = handlers.divergence(*p, *q, 4000, 2)
    assert n["kl_pq"] == pytest.approx(lec.gaussian_kl(0.3, 1.2, -1.0, 0.7), abs=1e-6)
    assert n["kl_qp"] == pytest.approx(lec.gaussian_kl(-1.0, 0.7, 0.3, 1.2), abs=1e-6)
    assert n["closed_form_kl_pq"] == pytest.approx(n["kl_pq"], abs=1e-6)
    assert abs(n["mc_kl_pq"] - n["kl_pq"]) <= 3 * n["mc_sem"] and n["mc_samples"] == 4000
    assert f"{n['kl_pq']:.3f}" in table and "closed form" in table and not n["p_equals_q"]
    assert densities is not None and jensen is not None


def test_every_preset_sets_the_sliders_and_p_equals_q_collapses_to_one_point(handlers):
    for name in divergence.PRESETS:
        values = handlers.divergence_preset(name)
        assert len(values) == 12
        *_, n = handlers.divergence(*values, 500, 0)
        assert n["kl_pq"] >= 0 and n["kl_qp"] >= 0
        assert abs(n["mc_kl_pq"] - n["kl_pq"]) <= 3 * n["mc_sem"] + 1e-12
    *_, table, n = handlers.divergence(*handlers.divergence_preset("p = q"), 500, 0)
    assert n["p_equals_q"] and n["kl_pq"] == 0 and n["mc_kl_pq"] == 0 and n["mean_g"] == 1.0
    assert "every sampled point of Jensen's picture is t = 1" in table


def test_the_fit_tab_gives_both_fits_and_the_constant(handlers):
    for name in fit.PRESETS:
        figure, table, n = handlers.fit(*handlers.fit_preset(name), 2000, 0)
        p = lec.Mixture.of(*fit.PRESETS[name])
        assert n["neg_entropy"] == pytest.approx(lec.neg_entropy(p), abs=1e-9)
        # KL[p ‖ q_θ] = E_p[log p] − E_p[log q_θ]: the constant separates the likelihood from the KL
        assert n["mle"]["forward_kl"] == pytest.approx(n["neg_entropy"] - n["expected_loglik"], abs=1e-9)
        assert n["mle"]["forward_kl"] >= n["moments"]["forward_kl"] - 1e-9  # moments: the argmin
        assert n["reverse"]["reverse_kl"] <= n["moments"]["reverse_kl"] + 1e-9
        assert "E_p[log p]" in table and "Posterior tab" in table and figure is not None
    *_, n = handlers.fit(*fit.PRESETS["two separated modes"], 2000, 0)
    assert abs(n["reverse"]["mean"]) == pytest.approx(2.0, abs=0.01)  # on one mode
    assert abs(n["mle"]["mean"]) < 0.2 and n["mle"]["std"] > 1.8  # covering both


def test_the_bundled_models_training_curves_come_from_their_metrics(tmp_path):
    ladder = inf.resolve_ladder()
    posterior, _ = inf.posterior_ladder(ladder)
    figure, caption = fit.learning_curves(Models(ladder, posterior))
    assert figure is not None and "No held-out lines" not in caption
    lines = figure.axes[0].get_lines()
    assert len(lines) == len(ladder.rungs) + 1  # the β ladder and the 2-latent digits model
    digits = Path(posterior.rungs[0].source) / "metrics.jsonl"
    records = [json.loads(x) for x in digits.read_text().splitlines()]
    held = [(r["step"], r["heldout_elbo"]) for r in records if "heldout_elbo" in r]
    assert [tuple(xy) for xy in lines[-1].get_xydata()] == held
    # a run without held-out lines is named in the caption, not drawn
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\nnot json\n')
    assert fit.read_heldout(tmp_path) is None


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"p_s1": 0.0}, "p's scale s₁ must be > 0"),
        ({"q_s2": 0.0, "q_w2": 0.5}, "q's scale s₂ must be > 0"),
        ({"q_w1": 0.0, "q_w2": 0.0}, "q's weights"),
        ({"samples": 1}, "N (samples)"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_input_is_one_message(handlers, bad, needle):
    with pytest.raises(gr.Error, match=re.escape(needle)):
        handlers.divergence(**bad)


# ---- through gradio_client ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    with serve_app() as (url, log):
        yield Client(url, verbose=False)


def test_every_control_of_the_divergence_tab_through_the_client(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/divergence", "/divergence_preset", "/fit", "/fit_preset"} <= set(named)
    params = [p["parameter_name"] for p in named["/divergence"]["parameters"]]
    assert params == [f"{d}_{k}{i}" for d in "pq" for i in (1, 2) for k in "wms"] + ["samples", "seed"]
    base = dict(zip(params, [*SINGLE[0], *SINGLE[1], 1000, 0], strict=True))
    *_, n = client.predict(**base, api_name="/divergence")
    reference = n["kl_pq"]
    assert reference == pytest.approx(lec.gaussian_kl(0.3, 1.2, -1.0, 0.7), abs=1e-3)
    # each control changes what it should: a mean, a scale, a weight of either mixture, N, the seed
    for name, value in [("p_m1", 0.8), ("p_s1", 0.9), ("q_m1", -0.5), ("q_s1", 1.0), ("p_w2", 0.5)]:
        *_, moved = client.predict(**{**base, name: value}, api_name="/divergence")
        assert moved["kl_pq"] != pytest.approx(reference, abs=1e-6), name
    for name, value in [("p_m2", 2.0), ("p_s2", 0.4), ("q_w2", 0.3), ("q_m2", 1.0), ("q_s2", 0.5)]:
        *_, moved = client.predict(**{**base, "p_w2": 0.5, "q_w2": 0.5, name: value}, api_name="/divergence")
        assert moved["kl_pq"] >= 0 and math.isfinite(moved["kl_qp"]), name
    *_, more = client.predict(**{**base, "samples": 8000}, api_name="/divergence")
    assert more["mc_samples"] == 8000 and more["mc_sem"] < n["mc_sem"]
    *_, other = client.predict(**{**base, "seed": 7}, api_name="/divergence")
    assert other["mc_kl_pq"] != n["mc_kl_pq"] and other["kl_pq"] == pytest.approx(reference, abs=1e-12)
    for preset in divergence.PRESETS:
        values = client.predict(preset, api_name="/divergence_preset")
        assert list(values) == [*divergence.PRESETS[preset][0], *divergence.PRESETS[preset][1]]


def test_every_control_of_the_fit_tab_through_the_client(client):
    for preset in fit.PRESETS:
        assert list(client.predict(preset, api_name="/fit_preset")) == list(fit.PRESETS[preset])
    figure, table, n = client.predict(*fit.PRESETS["two separated modes"], 500, 0, api_name="/fit")
    assert figure and "maximum likelihood" in table and n["samples"] == 500
    *_, other = client.predict(*fit.PRESETS["two separated modes"], 500, 4, api_name="/fit")
    assert other["mle"] != n["mle"] and other["reverse"] == pytest.approx(n["reverse"])
    *_, shifted = client.predict(1.0, 1.5, 0.5, 0.0, 0.0, 1.0, 3000, 0, api_name="/fit")
    assert shifted["reverse"]["mean"] == pytest.approx(1.5, abs=1e-3)
    assert shifted["mle"]["mean"] == pytest.approx(1.5, abs=0.05)


def test_bad_input_fails_on_its_tab_only_and_the_others_keep_working(client):
    with pytest.raises(AppError, match="scale s₁ must be > 0"):
        client.predict(
            0.5, -2.0, 0.0, 0.5, 2.0, 0.6, 1.0, 0.0, 2.1, 0.0, 0.0, 1.0, 100, 0, api_name="/divergence"
        )
    with pytest.raises(AppError, match="weights"):
        client.predict(0.0, -2.0, 0.6, 0.0, 2.0, 0.6, 100, 0, api_name="/fit")
    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio checks the dropdown
        client.predict("no such preset", api_name="/fit_preset")
    *_, n = client.predict(*fit.PRESETS["a big and a small mode"], 300, 0, api_name="/fit")
    assert n["samples"] == 300
    assert client.predict(1.0, 4, 1.0, 0, api_name="/sample")  # a model tab is untouched


def test_every_tab_opens_with_its_formula_in_the_notes_order():
    assert [m.__name__.rsplit(".", 1)[-1] for m in ui.TABS] == [
        "divergence",
        "fit",
        "posterior",
        "reconstruct",
        "sample",
        "interpolate",
        "traverse",
    ]
    for module in ui.TABS:
        formula = text.TAB_FORMULAS[module.__name__.rsplit(".", 1)[-1]]
        assert formula.startswith("$$") and formula.endswith("$$")


# ---- in Chromium ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_page():
    from test_app_browser import CHROMIUM, TIMEOUT_MS

    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with serve_app() as (url, log), playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
        browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 400])
def test_the_divergence_and_fit_tabs_in_chromium(browser_page, width):
    from test_app_browser import ARTIFACTS, open_tab, settle

    page = browser_page
    page.set_viewport_size({"width": width, "height": 900})
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_selector("[role=tab]")
    open_tab(page, "Divergence")  # the first tab: the page opens on it
    page.wait_for_selector("#div-numbers table")
    page.wait_for_selector("#div-densities [data-testid=matplotlib] img")
    page.wait_for_selector("#div-jensen [data-testid=matplotlib] img")
    assert page.locator(".formula .katex").count() >= 1  # the tab's formula, typeset by KaTeX
    assert page.locator("#div-props .katex").count() >= 3
    # a preset moves the sliders and recomputes: p = q collapses Jensen's picture onto t = 1
    page.locator("#div-preset input").click()
    page.get_by_role("option", name="p = q", exact=True).click()
    page.wait_for_function("document.querySelector('#div-numbers').innerText.includes('p = q:')")
    settle(page)
    page.screenshot(path=str(ARTIFACTS / f"demo-divergence-{width}px.png"), full_page=True)
    # a scale of 0: one message, this tab's outputs cleared; the other tabs keep working
    scale = page.locator("#div-p-s1 input[type=number]")
    scale.fill("0")
    scale.blur()  # the value is committed: the tab recomputes
    page.wait_for_function("document.body.innerText.includes('scale s₁ must be > 0')")
    settle(page)
    messages = page.evaluate(
        "Array.from(document.querySelectorAll('*')).filter(e => e.children.length === 0 && "
        "e.textContent.includes('scale s₁ must be > 0')).length"
    )
    assert messages == 1
    assert "KL[p ‖ q]" not in page.locator("#div-numbers").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"demo-divergence-bad-{width}px.png"), full_page=True)
    scale.fill("0.7")
    scale.blur()
    page.wait_for_selector("#div-numbers table")
    close = page.locator("button[aria-label='Close']")  # the toast, so it does not cover the next shots
    for i in range(close.count()):
        close.nth(i).click()

    open_tab(page, "Fit")
    page.wait_for_selector("#fit-plot [data-testid=matplotlib] img")
    page.wait_for_function("document.querySelector('#fit-numbers').innerText.includes('E_p[log p]')")
    assert "metrics.jsonl" in page.locator("#fit-curves-caption").inner_text()
    settle(page)
    page.screenshot(path=str(ARTIFACTS / f"demo-fit-{width}px.png"), full_page=True)
    open_tab(page, "Sample")
    page.wait_for_selector("#samples img")
    with Image.open(ARTIFACTS / f"demo-fit-{width}px.png") as shot:
        assert shot.width == width
