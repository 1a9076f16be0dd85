"""`python app.py` as a user starts it, driven through `gradio_client` (every public endpoint, a bad
upload then a good one, the upload cap and the file-serving boundary), plus its argument parsing."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw
from test_demo import EXAMPLE, make_ladder

from demo.ui import QUEUE_SIZE

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerLog:
    """What the app printed so far (stdout and stderr), read from its log file on demand; `pid`: the
    server's process id."""

    def __init__(self, path: Path):
        self.path = path
        self.pid: int | None = None

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def __contains__(self, needle: str) -> bool:
        return needle in self.text()


@contextlib.contextmanager
def serve_app(*args: str, env: dict | None = None):
    """Run `python app.py *args` on a free port (given through GRADIO_SERVER_PORT, as a Space would) and
    yield its URL and its log; stop it afterwards. The app runs as deployed: no TRITON_INTERPRET, no
    network."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAE_TRITON_BACKEND")}
    child_env.update(
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        OMP_NUM_THREADS="2",
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    with tempfile.TemporaryDirectory(prefix="app-log-") as folder:
        log = ServerLog(Path(folder) / "app.log")
        with open(log.path, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "app.py", *args],
                cwd=REPO,
                env=child_env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        log.pid = proc.pid
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while "Running on local URL" not in log:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start within {STARTUP_TIMEOUT_S} s:\n{log.text()}")
                time.sleep(0.2)
            yield url, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    ladder = make_ladder(tmp_path_factory.mktemp("ladder"), betas=(1.0, 4.0))
    with serve_app("--checkpoint", str(ladder)) as (url, log):
        yield url, log


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


def png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format in ("PNG", "GIF"), f"{path} is {img.format}"
        return img.size


def test_the_app_says_what_it_serves_and_lists_the_four_endpoints(app, client):
    assert "serving checkpoint models" in app[1] and "β ∈ {1, 4}" in app[1]
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    # A 10-latent ladder: no /posterior, and the tab says why instead.
    lecture = {"/divergence", "/divergence_preset", "/fit", "/fit_preset"}
    assert set(named) == {"/reconstruct", "/interpolate", "/sample", "/traverse", *lecture}
    config = httpx.get(f"{app[0]}/config", timeout=30).json()
    notes = [c["props"].get("value") or "" for c in config["components"] if c["type"] == "markdown"]
    assert any("needs a model with 2 latent dimensions; this one has 10" in n for n in notes)


def _components(config: dict) -> dict:
    return {c["id"]: c for c in config["components"]}


def test_each_event_takes_only_its_own_tabs_inputs(app):
    """Issue 13: a seed of −5 typed on Sample made every tab's β follow-up fail, because one event took
    every tab's inputs. Now no event but the Sample tab's reads the seed (or any other tab's control),
    and no input carries a range check that could reject a whole event before our code speaks."""
    config = httpx.get(f"{app[0]}/config", timeout=30).json()
    comps = _components(config)
    seed = next(i for i, c in comps.items() if c["props"].get("elem_id") == "seed")
    samples = next(i for i, c in comps.items() if c["props"].get("elem_id") == "samples")
    assert comps[seed]["props"].get("minimum") is None
    for dep in config["dependencies"]:
        if seed in dep["inputs"]:
            assert dep["outputs"] == [samples], dep
    # Each public event, when it fails, is followed by one that clears its outputs.
    for dep in config["dependencies"]:
        if dep["api_name"] in ("divergence", "fit", "reconstruct", "interpolate", "sample", "traverse"):
            clear = [d for d in config["dependencies"] if d["trigger_after"] == dep["id"]]
            assert [d["trigger_only_on_failure"] for d in clear] == [True]
            assert clear[0]["outputs"] == dep["outputs"] and clear[0]["inputs"] == []


def test_a_bad_seed_fails_alone_and_is_logged_as_one_line(app, client):
    with pytest.raises(AppError, match=r"seed must be in \[0, 2\*\*63\)"):
        client.predict(1.0, 4, 1.0, -5, api_name="/sample")
    # Every other endpoint works, at every β.
    for beta in (1.0, 4.0):
        assert png_size(client.predict(beta, 1, 1.0, 0, api_name="/sample")) == (128, 128)
        seen, *_ = client.predict(handle_file(str(EXAMPLE[0])), beta, 16, api_name="/reconstruct")
        assert png_size(seen) == (256, 256)
    deadline = time.monotonic() + 10
    while "user error: seed must be" not in app[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    log = app[1].text()
    assert "user error: seed must be in [0, 2**63), got -5" in log
    assert "Traceback" not in log, log[-3000:]


def test_concurrent_identical_calls_all_succeed(client):
    """Issue 13: 2 of 60 identical concurrent calls failed with "peer closed connection" (h11: less data
    than Content-Length): Gradio rewrote the content-addressed PNG another request was serving.

    Two waves of 30, so each fits the app's queue (QUEUE_SIZE): 60 at once is more than it admits, and
    the surplus is refused with "Queue is full" by design, sooner or later depending on how fast it drains.
    """
    assert 30 <= QUEUE_SIZE
    sizes = set()
    for _ in range(2):
        jobs = [client.submit(1.0, 4, 1.0, 7, api_name="/sample") for _ in range(20)]
        jobs += [
            client.submit(handle_file(str(EXAMPLE[1])), 1.0, 16, api_name="/reconstruct") for _ in range(10)
        ]
        sizes |= {png_size(job.result(timeout=300)) for job in jobs[:20]}
        sizes |= {png_size(job.result(timeout=300)[1]) for job in jobs[20:]}
    assert sizes == {(2 * 128 + 4, 2 * 128 + 4), (256, 256)}


def test_reconstruct_a_bad_upload_then_a_good_one(client, tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder wants")
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(str(bad)), 1.0, 16, api_name="/reconstruct")

    upload = tmp_path / "disc.png"  # RGBA, odd size: converted like the training data
    img = Image.new("RGBA", (150, 90), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((50, 20, 100, 70), fill=(255, 255, 255, 255))
    img.save(upload)
    seen, recon, panel, stats = client.predict(handle_file(str(upload)), 3.0, 16, api_name="/reconstruct")
    assert png_size(seen) == png_size(recon) == (256, 256)
    assert stats["beta"] == 4.0 and stats["iw_samples"] == 16
    assert stats["elbo"] == pytest.approx(-(stats["recon_nll"] + stats["kl"]), abs=1e-3)
    assert "ELBO" in panel and "gap" in panel


def test_interpolate_returns_a_strip_and_a_gif(client):
    strip, animation, gif = client.predict(
        handle_file(str(EXAMPLE[0])),
        handle_file(str(EXAMPLE[1])),
        1.0,
        5,
        "spherical",
        api_name="/interpolate",
    )
    assert png_size(strip) == (5 * 128 + 4 * 2, 128)
    assert Path(gif).suffix == ".gif" and png_size(gif) == (256, 256)
    assert Path(animation).suffix == ".gif"


def test_sample_and_traverse(client):
    grid = client.predict(4.0, 4, 0.8, 123, api_name="/sample")
    assert png_size(grid) == (2 * 128 + 4, 2 * 128 + 4)
    picture, caption = client.predict(handle_file(str(EXAMPLE[2])), 1.0, 3, 2.0, 5, api_name="/traverse")
    width, height = png_size(picture)
    # 5 columns × 3 rows of 128 px tiles, 2 px apart; a label column left, a row of values below, both
    # in a font of a fifth of a tile (25 px).
    assert 100 < width - (5 * 128 + 4 * 2) < 300 and height == 3 * 128 + 2 * 2 + 2 * 25
    assert "ranked by their KL" in caption
    with pytest.raises(AppError, match="minimum value 1"):  # Gradio checks the slider's range itself
        client.predict(4.0, 0, 0.8, 123, api_name="/sample")
    assert png_size(client.predict(1.0, 1, 1.0, 0, api_name="/sample")) == (128, 128)


def test_uploads_are_capped_and_no_files_are_served_beyond_outputs(app):
    url = app[0]
    big = b"\0" * (11 * 1024 * 1024)
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
    assert r.status_code == 413, r.text[:200]
    for path in (REPO / "app.py", REPO / "demo" / "models", Path("/etc/passwd"), EXAMPLE[0].parent / ".."):
        r = httpx.get(f"{url}/gradio_api/file={path}", timeout=30)
        assert r.status_code in (403, 404), (path, r.status_code)


# ---- argument parsing (no server) -----------------------------------------------------------------
def test_flags_fall_back_to_the_environment(monkeypatch):
    monkeypatch.delenv("VAE_CHECKPOINT", raising=False)
    import app as app_module  # builds the module-level `demo` from the environment, like a Space

    assert app_module.demo is not None
    monkeypatch.setenv("VAE_CHECKPOINT", "/runs/ladder")
    monkeypatch.setenv("VAE_HUB_REPO", "me/vae")
    args = app_module.parse_args([])
    assert (args.checkpoint, args.hub_repo, args.host, args.port) == ("/runs/ladder", "me/vae", None, None)
    args = app_module.parse_args(["--checkpoint", "x", "--host", "0.0.0.0", "--port", "8080", "--share"])
    assert (args.checkpoint, args.host, args.port, args.share) == ("x", "0.0.0.0", 8080, True)


def test_a_checkpoint_that_is_not_there_stops_the_app_with_a_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "app.py", "--checkpoint", str(tmp_path / "no-such-run")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert done.returncode != 0
    assert "no-such-run does not exist" in done.stderr and "Traceback" not in done.stderr


# ---- the Posterior tab, on the bundled 2-latent digits model ------------------------------------------
@pytest.fixture(scope="module")
def bundled_client():
    with serve_app() as (url, log):
        assert "serving bundled models" in log
        yield Client(url, verbose=False)


def _check_posterior(numbers: dict) -> None:
    """The identity on the grid, and IW bounds rising with K to log p(x), within Monte Carlo error."""
    assert numbers["elbo"] + numbers["kl_to_posterior"] == pytest.approx(numbers["log_px"], abs=1e-3)
    assert numbers["kl_to_posterior"] > 0 and numbers["q_mass_on_grid"] == pytest.approx(1.0, abs=1e-4)
    bounds = numbers["iw_bounds"]
    assert [b["K"] for b in bounds] == [1, 10, 100, 1000]
    sem = [b["sem"] or 0.0 for b in bounds]
    for i in range(3):
        assert bounds[i + 1]["bound"] >= bounds[i]["bound"] - 3 * math.hypot(sem[i], sem[i + 1]), bounds
    for b, s in zip(bounds, sem, strict=True):
        assert b["bound"] <= numbers["log_px"] + 3 * s + 1e-3, (bounds, numbers["log_px"])
    assert bounds[0]["bound"] == pytest.approx(numbers["elbo"], abs=4 * sem[0] + 1e-3)  # K = 1: the ELBO


def test_posterior_on_an_example_and_an_upload(bundled_client, tmp_path):
    named = bundled_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/posterior" in named
    example = REPO / "demo" / "models" / "digits2d" / "examples" / "digit-0.png"
    seen, latent, figure, identity, bounds, caption, numbers = bundled_client.predict(
        handle_file(str(example)), api_name="/posterior"
    )
    assert png_size(seen) == (112, 112) and png_size(latent) == (2 * 15 * 28,) * 2
    assert "log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)]" in identity and "Jensen" in caption
    assert figure and bounds  # the two matplotlib figures, as gr.Plot sends them
    _check_posterior(numbers)

    upload = tmp_path / "seven.png"  # an RGB photo-sized "7", not like the training files
    img = Image.new("RGB", (300, 200), "black")
    ImageDraw.Draw(img).line([(110, 40), (190, 40), (140, 170)], fill="white", width=22)
    img.save(upload)
    *_, numbers_upload = bundled_client.predict(handle_file(str(upload)), api_name="/posterior")
    _check_posterior(numbers_upload)
    assert numbers_upload["log_px"] != numbers["log_px"]
