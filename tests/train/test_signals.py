"""Ctrl-C (SIGINT) and SIGTERM stop `python -m train` at a step boundary, with a checkpoint of the last
completed step, so that `--resume` continues the run bit-identically; a second signal stops at once.

The trials send real signals to real `python -m train` processes at random moments of their training.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.loop as loop
from train import checkpoint as ckpt
from train.config import parse_args
from train.stop import REPEAT_WINDOW_S

REPO = Path(__file__).resolve().parents[2]
TRIALS = 10  # per signal
# Tiny and quick: the mlp preset on 64 dSprites images; no checkpoint but the one a signal asks for.
RUN = (
    "--dataset dsprites --limit 64 --batch-size 8 --preset mlp --latent-dim 4 --steps 80 --log-every 4 "
    "--eval-every 100000 --checkpoint-every 100000 --eval-images 16 --num-threads 1 --no-progress"
).split()


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")  # the kernels have their own tests


def cli(out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", *RUN, "--cache-dir", str(cache), "--out", str(out), *extra]


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VAE_TRITON_BACKEND": "torch",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def run_until_signal(cmd: list[str], sig: int, delay_fraction: float, train_seconds: float):
    """Start `cmd`, wait for its first log line, sleep `delay_fraction` of `train_seconds`, send `sig`.
    Returns (exit status, stdout, stderr)."""
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = []
    for line in p.stdout:
        first.append(line)
        if line.startswith("step "):
            break
    time.sleep(delay_fraction * train_seconds)
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, "".join(first) + out, err


def weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigint_and_sigterm_then_resume_equal_an_uninterrupted_run(tmp_path):
    t0 = time.perf_counter()
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    r = subprocess.run(cli(straight, cache), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    expected, expected_rng = weights(straight), ckpt.load_checkpoint(straight)["rng"]
    train_seconds = _train_seconds(straight)  # the signals land at a uniform moment of this span
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    plan = [(sig, i, rng.random()) for sig in (signal.SIGINT, signal.SIGTERM) for i in range(TRIALS)]

    def trial(sig, i, fraction):
        out = tmp_path / f"{signal.Signals(sig).name}-{i}"
        code, _, stderr = run_until_signal(cli(out, cache), sig, fraction, train_seconds)
        stopped = code == 128 + sig
        name = signal.Signals(sig).name
        said = f"{name} received: stopped at step" in stderr and "checkpoint saved" in stderr
        resumed = subprocess.run(
            cli(out, cache, "--resume"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
        )
        ok = resumed.returncode == 0 and same(weights(out), expected)
        ok = ok and torch.equal(ckpt.load_checkpoint(out)["rng"], expected_rng)
        print(
            f"{out.name}: exit {code}, {'stopped mid-run' if stopped else 'ran to the end'}, resumed "
            f"{'bit-identical' if ok else 'DIFFERENT: ' + resumed.stderr[-500:]}",
            flush=True,
        )
        clean = (said and "Traceback" not in stderr) if stopped else code == 0
        return {
            "signal": sig,
            "code": code,
            "stopped": stopped,
            "identical": ok,
            "clean": clean,
            "stderr": stderr[-2000:],
        }

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda t: trial(*t), plan))
    elapsed = time.perf_counter() - t0
    mid_run, identical = sum(r["stopped"] for r in results), sum(r["identical"] for r in results)
    print(
        f"\n{len(plan)} signal trials (seed {seed}) in {elapsed:.0f} s: {mid_run} stopped mid-run, "
        f"{identical} bit-identical"
    )
    assert identical == len(plan), (seed, [(r["signal"], r["code"]) for r in results if not r["identical"]])
    # Stopped with 128 + the signal number and a message, or (a signal after the last step) finished.
    assert all(r["clean"] for r in results), (seed, [r for r in results if not r["clean"]])
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Most signals must land while the run trains, or the trials test nothing.
        assert sum(r["stopped"] for r in results if r["signal"] == sig) >= TRIALS // 2, (seed, results)


def _train_seconds(out: Path) -> float:
    """The wall time from the first logged step to the last one of a finished run (metrics.jsonl)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    rates = [(r["step"], r["img_per_s"]) for r in rows if "img_per_s" in r and not r.get("final")]
    batch = int(RUN[RUN.index("--batch-size") + 1])
    log_every = int(RUN[RUN.index("--log-every") + 1])
    return sum(log_every * batch / rate for _, rate in rates[1:])


KILL_TRIALS = 6


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    """kill -9 cannot be handled: the run continues from its last --checkpoint-every checkpoint (the atomic
    writes leave no half checkpoint, the OS releases the folder's lock), and ends bit-identical."""
    cache, straight = tmp_path / "cache", tmp_path / "straight"
    r = subprocess.run(cli(straight, cache), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    expected, train_seconds = weights(straight), _train_seconds(straight)
    seed = random.randrange(2**31)
    rng = random.Random(seed)

    def trial(i: int, fraction: float) -> tuple[int, bool]:
        out = tmp_path / f"kill-{i}"
        code, _, _ = run_until_signal(
            cli(out, cache, "--checkpoint-every", "8"), signal.SIGKILL, fraction, train_seconds
        )
        try:  # killed before its first checkpoint: nothing to resume, the run starts again
            ckpt.load_checkpoint(out)
            again = ["--resume"]
        except (ckpt.CheckpointError, FileNotFoundError):
            again = []
        resumed = subprocess.run(
            cli(out, cache, *again), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, (seed, resumed.stderr[-2000:])
        return code, same(weights(out), expected)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: trial(i, rng.random()), range(KILL_TRIALS)))
    assert all(identical for _, identical in results), (seed, results)
    assert sum(code == -signal.SIGKILL for code, _ in results) >= KILL_TRIALS // 2, (seed, results)


# ---- in-process: the handler itself ---------------------------------------------------------------------
SMALL = (
    "--dataset dsprites --limit 64 --batch-size 16 --preset mlp --latent-dim 4 --steps 20 --eval-images 16 "
    "--num-threads 1 --no-progress --checkpoint-every 100000"
).split()


def signal_inside_step(monkeypatch, at: int, then):
    """Make step `at` send this process SIGINT/SIGTERM before it computes, then call `then()`."""
    real = loop.make_train_step

    def make(*a, **k):
        inner = real(*a, **k)

        def step(batch, i):
            if i == at:
                then()
            return inner(batch, i)

        return step

    monkeypatch.setattr(loop, "make_train_step", make)


class Foreign(Exception):
    """Raised by the handler a test installs before train(): it must be back afterwards."""


def foreign_handler(signum, frame):
    raise Foreign(signum)


def test_a_signal_inside_a_step_stops_after_it_with_its_checkpoint(tmp_path, monkeypatch, capsys):
    signal_inside_step(monkeypatch, 5, lambda: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGTERM, foreign_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.train(parse_args([*SMALL, "--out", str(tmp_path / "run")]))
        assert signal.getsignal(signal.SIGTERM) is foreign_handler  # handlers restored
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Step 5 (0-based) ran to its end: the checkpoint holds 6 completed steps and the RNG state after them.
    assert ckpt.load_checkpoint(tmp_path / "run")["step"] == 6
    err = capsys.readouterr().err
    assert "SIGINT received: stopped at step 6/20; checkpoint saved" in err, err


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch, capfd):
    pid = os.getpid()

    def two_signals():
        os.kill(pid, signal.SIGTERM)  # the first: the step goes on
        second = threading.Timer(REPEAT_WINDOW_S + 0.5, os.kill, (pid, signal.SIGTERM))
        second.start()
        time.sleep(120)  # a long step: only the second signal can end it early
        pytest.fail("the second signal did not stop the run")

    signal_inside_step(monkeypatch, 3, two_signals)
    previous = signal.signal(signal.SIGTERM, foreign_handler)
    t0 = time.perf_counter()
    try:
        with pytest.raises(SystemExit) as stopped:
            loop.train(parse_args([*SMALL, "--out", str(tmp_path / "run")]))
        assert signal.getsignal(signal.SIGTERM) is foreign_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.perf_counter() - t0 < 60
    assert stopped.value.code == 143 and stopped.value.now
    err = capfd.readouterr().err  # the handler writes to file descriptor 2 itself
    assert "SIGTERM: stopping after this step" in err and "SIGTERM again: stopping now" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()  # the cut-short step is not saved


def test_a_repeated_delivery_of_the_same_signal_is_one_request(tmp_path, monkeypatch, capsys):
    # timeout(1) sends SIGTERM to the command and then to its process group: two copies at once.
    def twice():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    signal_inside_step(monkeypatch, 2, twice)
    previous = signal.signal(signal.SIGTERM, foreign_handler)
    try:
        with pytest.raises(SystemExit) as stopped:
            loop.train(parse_args([*SMALL, "--out", str(tmp_path / "run")]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143 and not stopped.value.now
    assert ckpt.load_checkpoint(tmp_path / "run")["step"] == 3


# ---- torchrun: the ranks agree on the step -----------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        *"-m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port".split(),
        str(_free_port()),
        "-m",
        "train",
        *RUN,
        "--batch-size",
        "16",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_sigterm_to_a_torchrun_group_stops_all_ranks_after_the_same_step(tmp_path):
    # SIGTERM to the whole process group, as Slurm and `timeout` send it: the agent and both workers get
    # it, and the agent forwards it once more. The ranks agree at a --log-every step.
    cache, straight, split = tmp_path / "cache", tmp_path / "straight", tmp_path / "split"
    r = subprocess.run(
        torchrun(straight, cache), cwd=REPO, env=env(), capture_output=True, text=True, timeout=400
    )
    assert r.returncode == 0, r.stderr[-4000:]
    p = subprocess.Popen(
        torchrun(split, cache),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in p.stdout:
        if line.startswith("step "):
            break
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "SIGTERM received: stopped at step" in err, err[-4000:]
    stopped_at = ckpt.load_checkpoint(split)["step"]
    assert stopped_at % 4 == 0 and stopped_at < 80, stopped_at  # a --log-every step: where ranks agree
    assert ckpt.load_checkpoint(split)["rng"].shape[0] == 2  # both ranks' noise streams saved
    r = subprocess.run(
        torchrun(split, cache, "--resume"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=400
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert same(weights(split), weights(straight))
