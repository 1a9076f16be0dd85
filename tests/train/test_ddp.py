"""`torchrun --nproc_per_node 2 -m train` on CPU: gloo, one writer, ranks kept in sync."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vae_triton.model import VAE

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_on_cpu(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "VAE_TRITON_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        *"-m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port".split(),
        str(_free_port()),
        "-m",
        "train",
        "--dataset",
        "dsprites",
        "--limit",
        "128",
        "--preset",
        "small",
        "--latent-dim",
        "4",
        "--batch-size",
        "16",
        "--steps",
        "6",
        "--log-every",
        "2",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "3",
        "--eval-images",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    if r.returncode != 0 and "terminate called without an active exception" in r.stderr:
        # Seen about once in 15 runs on a loaded 2-core CPU: a gloo worker thread aborts while the process
        # group is torn down after the run. One fresh attempt; any other failure, or a second one, fails.
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[:6000]
    # Checkpoints at steps 3 and 6 ran the cross-rank weight check (it raises on any difference).
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == [2, 4, 6]  # rank 0 alone writes: no duplicated lines
    assert sum(1 for row in rows if row.get("final")) == 1
    model = VAE.from_pretrained(out)
    assert model.metadata["steps"] == 6 and model.metadata["batch_size"] == 16
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 6
