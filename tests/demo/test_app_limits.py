"""The app under load holds its limits: every event (the public ones and the internal ones the page
itself calls, such as `follow_beta`, `snap` and the rate–distortion plane) goes through the queue, 60
concurrent raw HTTP calls to each get an answer, "Queue is full" or a clear error (never HTTP 500), no
more than CONCURRENCY_LIMIT run at once, and malformed inputs to the internal events get a message.

Also: the output folder is private to each server (a planted symlink at a predictable name cannot make
the pruning delete someone else's files), and Gradio's cache of uploads is kept for minutes and bounded
in size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image
from test_app_client import REPO, serve_app

from demo import outputs, ui

pytestmark = pytest.mark.slow
BURST = 60
JSON = {"content-type": "application/json"}
CALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def app():
    """The bundled models (a β ladder with held-out numbers, so the rate–distortion plane is drawn, and
    the 2-latent digits model, so the Posterior tab and its click-to-decode event exist)."""
    with serve_app() as (url, log):
        yield url, log, log.pid


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _default_data(config: dict, dep: dict) -> tuple[list, object]:
    """What the page would send: each input component's current value (a Dataset: its first row), and
    the event's data (a click: a point; a slider's release: its value)."""
    comps = {c["id"]: c for c in config["components"]}
    data = [0 if comps[i]["type"] == "dataset" else comps[i]["props"].get("value") for i in dep["inputs"]]
    trigger = dep["targets"][0][1] if dep["targets"] else None
    event_data = {"select": {"index": [100, 100], "value": None}, "release": data[0] if data else None}
    return data, event_data.get(trigger)


def call(url: str, dep: dict, data: list, event_data=None) -> dict:
    """One raw call of event `dep`, as the page makes it: join the queue (or, for an unqueued event,
    POST /run/predict), then read the event's messages. Returns {"kind": "answer" | "error" | "full" |
    "http", "status", "message", "start", "end"} with the client-side times the event ran between."""
    session = uuid.uuid4().hex
    body = {"data": data, "event_data": event_data, "fn_index": dep["id"], "session_hash": session}
    with httpx.Client(base_url=f"{url}/gradio_api", timeout=CALL_TIMEOUT_S) as http:
        if not dep.get("queue", True):
            start = time.monotonic()
            r = http.post("/run/predict", content=json.dumps(body), headers=JSON)
            kind = "answer" if r.status_code == 200 else "http"
            return {
                "kind": kind,
                "status": r.status_code,
                "message": r.text[:300],
                "start": start,
                "end": time.monotonic(),
            }
        r = http.post("/queue/join", content=json.dumps(body), headers=JSON)  # NaN/inf allowed
        if r.status_code == 503 and "Queue is full" in r.text:
            return {"kind": "full", "status": 503, "message": r.text, "start": None, "end": None}
        if r.status_code != 200:
            return {
                "kind": "http",
                "status": r.status_code,
                "message": r.text[:300],
                "start": None,
                "end": None,
            }
        start = None
        with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_starts":
                    start = time.monotonic()
                elif msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    ok = msg.get("success")
                    return {
                        "kind": "answer" if ok else "error",
                        "status": 200,
                        "message": out.get("error") or out.get("title"),
                        "start": start,
                        "end": time.monotonic(),
                    }
    return {
        "kind": "http",
        "status": 0,
        "message": "the stream ended without a result",
        "start": None,
        "end": None,
    }


def peak_overlap(results: list[dict], jitter_s: float = 0.05) -> int:
    """The most events seen running at once, from the client-side times of their start and completion
    messages. Each interval is shrunk by `jitter_s` at both ends: the messages of 60 events travel on 60
    streams read by 60 threads, and arrive late by up to tens of milliseconds on a loaded machine. So
    events shorter than 2 × jitter_s are not counted (their overlap cannot be told from the jitter)."""
    marks = []
    for r in results:
        if r["start"] is not None and r["end"] is not None and r["end"] - r["start"] > 2 * jitter_s:
            marks += [(r["start"] + jitter_s, 1), (r["end"] - jitter_s, -1)]
    peak = running = 0
    for _, step in sorted(marks):  # at equal times an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


def test_every_event_is_queued_and_the_rest_routes_are_closed(app):
    url = app[0]
    config = httpx.get(f"{url}/config", timeout=30).json()
    backend = [d for d in config["dependencies"] if d["backend_fn"]]
    names = {d["api_name"] for d in backend}
    assert {"follow_beta", "snap", "plane", "warn_outside", "decode_click", "posterior"} <= names
    assert [d["api_name"] for d in backend if not d.get("queue", True)] == []
    # A direct POST would run the event outside the queue and its concurrency limit.
    for dep in backend:
        data, event_data = _default_data(config, dep)
        body = {"data": data, "event_data": event_data, "fn_index": dep["id"], "session_hash": "x"}
        r = httpx.post(f"{url}/gradio_api/run/predict", json=body, timeout=60)
        assert r.status_code == 404 and "join the queue" in r.text, (dep["api_name"], r.status_code)


def test_60_concurrent_calls_to_every_event_hold_the_limits(app):
    url, log, pid = app
    config = httpx.get(f"{url}/config", timeout=30).json()
    backend = [d for d in config["dependencies"] if d["backend_fn"]]
    for dep in backend:
        data, event_data = _default_data(config, dep)
        cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
        with ThreadPoolExecutor(BURST) as pool:
            results = list(pool.map(call, [url] * BURST, [dep] * BURST, [data] * BURST, [event_data] * BURST))
        cpu, wall = _cpu_seconds(pid) - cpu0, time.monotonic() - wall0
        kinds = {r["kind"] for r in results}
        name = dep["api_name"]
        counts = {k: sum(r["kind"] == k for r in results) for k in sorted(kinds)}
        print(f"{name}: {counts}, {wall:.1f} s, {cpu:.1f} CPU s")
        assert "http" not in kinds, (name, [r for r in results if r["kind"] == "http"][:2])
        assert "answer" in kinds or "error" in kinds, (name, results[:2])
        assert peak_overlap(results) <= ui.CONCURRENCY_LIMIT, name
        # The server's CPU time is bounded by the computations the queue lets run at once (plus one core
        # for the web server that answers and refuses), however many calls arrive.
        assert cpu <= (ui.CONCURRENCY_LIMIT + 1) * wall + 1.0, (name, cpu, wall)
    assert "Traceback" not in log.text(), log.text()[-3000:]


MALFORMED = {
    "follow_beta": [([[1, 2]], "β must be a number"), ([{"beta": 1}], "β must be a number")],
    "snap": [([[1, 2]], "β must be a number")],
    "warn_outside": [([None], "β must be a number")],
    "plane": [
        (["abc", None], "β must be a finite number"),
        ([1.0, "junk"], "stats must be"),
        ([1.0, {"beta": 1.0, "kl": "x", "recon_nll": 3.0}], "stats must hold"),
        ([1.0, {"beta": 1.0, "kl": float("inf"), "recon_nll": 3.0}], "stats must hold"),
    ],
    # (A click event without any event data fails inside Gradio, before the handler: no message there.)
    "decode_click": [([], "click a point", {"index": "x", "value": None}), ([], "click a point", {})],
}


def test_malformed_inputs_to_the_internal_events_get_a_clear_error(app):
    url = app[0]
    config = httpx.get(f"{url}/config", timeout=30).json()
    deps = {d["api_name"]: d for d in config["dependencies"] if d["backend_fn"]}
    for name, cases in MALFORMED.items():
        for data, message, *event_data in cases:
            # An event's own inputs (e.g. the Posterior tab's model switch) left at their default.
            data = [*data, *[None] * (len(deps[name]["inputs"]) - len(data))]
            r = call(url, deps[name], data, *event_data)
            assert r["kind"] == "error" and message in (r["message"] or ""), (name, data, r)
        r = call(url, deps[name], [])  # too few inputs: refused by Gradio, in the queue, not HTTP 500
        assert r["kind"] == "error", (name, r)
    good = call(url, deps["plane"], [4.0, {"beta": 4.0, "kl": 12.0, "recon_nll": 70.0}])
    assert good["kind"] == "answer", good


# ---- the output folder ----------------------------------------------------------------------------
SAMPLE_ONCE = """
from pathlib import Path
from demo import inference, ui
png = Path(ui.make_handlers(inference.resolve_ladder()).sample(1.0, 4, 1.0, 0))
folder = png.parents[1]  # FOLDER/png/NAME.png
print(folder, oct(folder.stat().st_mode & 0o777), png, sep="\\n")
"""


def _run_demo_code(code: str, tmpdir: Path) -> list[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_the_output_folder_is_private_per_server_and_a_planted_symlink_prunes_nothing(tmp_path):
    # Someone else on the machine planted the folder name an older version used, pointing at their
    # folder of 300 files: none of them may be deleted.
    victim = tmp_path / "victim"
    (victim / "png").mkdir(parents=True)
    old = time.time() - 3600
    for i in range(300):
        path = victim / "png" / f"{i:04d}.png"
        path.write_bytes(b"not ours")
        os.utime(path, (old, old))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmpdir / "vae-triton-demo").symlink_to(victim, target_is_directory=True)
    first = _run_demo_code(SAMPLE_ONCE, tmpdir)
    second = _run_demo_code(SAMPLE_ONCE, tmpdir)
    assert len(list((victim / "png").iterdir())) == 300
    assert first[0] != second[0]  # one folder per server
    for folder, mode, _ in (first, second):
        assert Path(folder).parent == tmpdir and mode == "0o700"
        assert not Path(folder).exists()  # removed when the server exits


def test_pruning_never_follows_or_deletes_a_symlink(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"someone else's")
    folder = tmp_path / "png"
    folder.mkdir()
    (folder / "aaa.png").symlink_to(target)
    old = time.time() - 3600
    for i in range(5):
        path = folder / f"{i}.png"
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    os.utime(target, (old, old))
    outputs.prune(folder, ".png", keep=0)
    assert (folder / "aaa.png").is_symlink() and target.read_bytes() == b"someone else's"
    assert sorted(p.name for p in folder.iterdir()) == ["aaa.png"]
    # A symlink in place of the folder itself: nothing behind it is touched.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.png").write_bytes(b"x")
    os.utime(other / "keep.png", (old, old))
    (tmp_path / "link").symlink_to(other, target_is_directory=True)
    monkeypatch.setattr(outputs, "PNG_DIR", tmp_path / "link")
    monkeypatch.setattr(outputs, "KEEP_PNG_FILES", 0)
    outputs.png_file(Image.new("L", (2, 2)))  # writes through the link, then prunes: nothing
    outputs.prune(tmp_path / "link", ".png", keep=0)
    assert (other / "keep.png").exists()


# ---- Gradio's cache of uploads --------------------------------------------------------------------
def test_uploads_are_kept_for_minutes_and_their_total_is_bounded(tmp_path):
    frequency, age = ui.DELETE_CACHE
    assert frequency <= 120 and age <= 15 * 60  # minutes, not an hour
    assert ui.CACHE_MAX_BYTES <= 1024 * 2**20 and ui.CACHE_CHECK_S <= 5

    with gr.Blocks(delete_cache=ui.DELETE_CACHE) as blocks:
        gr.Markdown()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 4096)
    files = []
    for i in range(10):  # what Gradio records for these Blocks when a client uploads
        path = tmp_path / f"upload-{i}.bin"
        path.write_bytes(b"\0" * 1000)
        files.append(path)
        time.sleep(0.01)  # distinct ctimes: the oldest go first
    link = tmp_path / "link.bin"
    link.symlink_to(outside)
    blocks.upload_file_set.update(str(p) for p in [*files, link])
    outputs.bound_gradio_cache(blocks, max_bytes=3500, every_s=0.05)
    deadline = time.monotonic() + 10
    while sum(p.exists() for p in files) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.exists() for p in files] == [False] * 7 + [True] * 3
    assert link.is_symlink() and outside.stat().st_size == 4096
