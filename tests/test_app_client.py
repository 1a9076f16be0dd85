"""`python app.py` as a user starts it, driven through `gradio_client` (every public endpoint, a bad
upload then a good one, the upload cap and the file-serving boundary), plus its argument parsing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw
from test_demo import EXAMPLE, make_ladder

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(*args: str, env: dict | None = None):
    """Run `python app.py *args` on a free port (given through GRADIO_SERVER_PORT, as a Space would) and
    yield its URL; stop it afterwards. The app runs as deployed: no TRITON_INTERPRET, no network."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAE_TRITON_BACKEND")}
    child_env.update(
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        OMP_NUM_THREADS="2",
        **(env or {}),
    )
    proc = subprocess.Popen(
        [sys.executable, "app.py", *args],
        cwd=REPO,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{''.join(lines)}")
            lines.append(line)
            if "Running on local URL" in line:
                break
        else:
            raise RuntimeError(f"app.py did not start within {STARTUP_TIMEOUT_S} s:\n{''.join(lines)}")
        yield url, "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


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
    assert set(named) == {"/reconstruct", "/interpolate", "/sample", "/traverse"}


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
    assert png_size(picture) == (200 + 5 * 128 + 4 * 2, 32 + 3 * 128 + 2 * 2)
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
