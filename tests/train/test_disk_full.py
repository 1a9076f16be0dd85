"""A full disk: one line that names the file and what is kept, nothing half-written left, no result lost.

Two kinds of test. On a real full file system: a small tmpfs mounted for the test (needs root or
CAP_SYS_ADMIN; skipped where mounting is not permitted). Everywhere: the same failures injected by
monkeypatching (`shutil.disk_usage` reporting no space, `os.fsync` / `os.posix_fallocate` raising ENOSPC, as
NFS and a reservation do).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train.checkpoint as ckpt
from train import evaluate
from train.imagecache import build_cache
from vae_triton import io
from vae_triton.io import DiskFullError, atomic_path, write_text_atomic
from vae_triton.model import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "VAE_TRITON_BACKEND": "torch"}


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk("2m")`: a fresh tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot mount a tmpfs here ({e}); the monkeypatched tests cover the same paths")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the monkeypatched tests cover it")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Write a filler file until `leave` bytes (or none) are free."""
    todo = shutil.disk_usage(folder).free - leave
    with open(folder / "filler", "wb") as f:
        try:
            while todo > 0:
                todo -= f.write(b"\0" * min(todo, 1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _model_and_optimizer(width: int = 200):
    model = torch.nn.Linear(width, width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    return model, opt


def no_temps(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---- checkpoints ----------------------------------------------------------------------------------------
def test_a_checkpoint_on_a_full_tmpfs_is_one_line_and_the_previous_one_is_kept(small_disk):
    disk = small_disk("2m")
    model, opt = _model_and_optimizer()  # 160 KB of weights, 320 KB of optimizer state
    ckpt.save_checkpoint(disk, model, opt, 4, {})
    fill(disk, leave=100_000)
    model(torch.randn(2, 200)).sum().backward()
    opt.step()
    with pytest.raises(DiskFullError) as e:
        ckpt.save_checkpoint(disk, model, opt, 8, {})
    message = one_line(str(e.value))
    assert "step-00000008.safetensors" in message and "the previous checkpoint (step 4)" in message
    assert e.value.errno == errno.ENOSPC
    names = sorted(p.name for p in (disk / "checkpoints").iterdir())
    assert names == ["latest.json", "step-00000004.safetensors", "step-00000004.state.pt"]
    assert ckpt.load_checkpoint(disk)["step"] == 4


def test_running_out_midway_on_a_tmpfs_removes_the_half_written_pair(small_disk, monkeypatch):
    """The free-space check passed (another writer filled the disk after it): the file system's own
    ENOSPC, met in the middle of the state file, gives the same line and leaves no half pair."""
    disk = small_disk("2m")
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(disk, model, opt, 4, {})
    fill(disk, leave=300_000)  # the weights (160 KB) fit, their optimizer state (320 KB) does not
    monkeypatch.setattr(io, "ensure_free_space", lambda *a, **k: None)
    monkeypatch.setattr(ckpt, "ensure_free_space", lambda *a, **k: None)
    with pytest.raises(DiskFullError) as e:
        ckpt.save_checkpoint(disk, model, opt, 8, {})
    assert "step-00000008.state.pt" in one_line(str(e.value)) and "previous checkpoint (step 4)" in str(
        e.value
    )
    names = sorted(p.name for p in (disk / "checkpoints").iterdir())
    assert names == ["latest.json", "step-00000004.safetensors", "step-00000004.state.pt"]
    assert ckpt.load_checkpoint(disk)["step"] == 4


def test_python_m_train_on_a_full_tmpfs_ends_with_one_line_and_a_loadable_checkpoint(small_disk):
    """The first checkpoint (3.3 MB) fits in 6 MB, the second does not while the first is kept."""
    out = small_disk("6m") / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--dataset",
            "dsprites",
            "--limit",
            "64",
            "--batch-size",
            "16",
            "--preset",
            "small",
            "--latent-dim",
            "4",
            "--eval-images",
            "32",
            "--num-threads",
            "1",
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "100",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert line.startswith("error: no space left on the device to write ") and "step-00000004" in line, line
    assert "the previous checkpoint (step 2)" in line
    assert ckpt.load_checkpoint(out)["step"] == 2 and no_temps(out)


def test_a_full_disk_is_known_before_the_write(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer(16)
    ckpt.save_checkpoint(tmp_path, model, opt, 1, {})
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=4096))
    with pytest.raises(DiskFullError, match=r"it needs [\d.]+ KB, 4.0 KB free\); the previous checkpoint"):
        ckpt.save_checkpoint(tmp_path, model, opt, 2, {})
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before


def test_enospc_while_writing_is_one_line_naming_the_file(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer(16)
    ckpt.save_checkpoint(tmp_path, model, opt, 1, {})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # NFS reports a full disk at fsync or close
    with pytest.raises(DiskFullError) as e:
        ckpt.save_checkpoint(tmp_path, model, opt, 2, {})
    assert "step-00000002.safetensors" in one_line(str(e.value)) and "(step 1)" in str(e.value)
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest.json", "step-00000001.safetensors", "step-00000001.state.pt"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1


def test_safetensors_own_full_disk_error_becomes_the_same_line(tmp_path):
    """`VAE.save_pretrained` writes with safetensors' `save_file`, whose error on a full disk is a
    SafetensorError ("I/O error: No space left on device (os error 28)"), not an OSError."""
    from safetensors import SafetensorError

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFullError, match="model.safetensors .*the previous model.safetensors is kept"):
        with atomic_path(target):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_model_saved_on_a_full_tmpfs_is_one_line(small_disk):
    disk = small_disk("1m")
    fill(disk)
    with pytest.raises(DiskFullError, match="model.safetensors"):
        VAE(VAEConfig.preset("small")).save_pretrained(disk / "model")
    assert no_temps(disk)


# ---- the image cache ------------------------------------------------------------------------------------
CACHE_BUILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from train.imagecache import build_cache
    from vae_triton.io import DiskFullError

    def fill(out, bar):
        out[:] = 7
    try:
        build_cache(Path(sys.argv[1]) / "images.npy", (4000, 1, 32, 32), fill, desc="cache", progress=False)
    except DiskFullError as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    """
)


def test_a_cache_build_on_a_full_tmpfs_is_an_error_not_a_sigbus(small_disk):
    """4 MB of cache on a 1 MB tmpfs: writing through a memmap of a sparse file there is a SIGBUS."""
    disk = small_disk("1m")
    r = subprocess.run(
        [sys.executable, "-c", CACHE_BUILD, str(disk)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 3, (r.returncode, r.stderr)  # -7 (SIGBUS) without the reservation
    assert "images.npy" in one_line(r.stderr) and "nothing was written" in r.stderr
    assert list(disk.iterdir()) == []


def test_a_reservation_that_fails_leaves_no_cache_and_no_temp(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(DiskFullError, match="images.npy"):
        build_cache(tmp_path / "images.npy", (8, 1, 4, 4), lambda out, bar: None, desc="c", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_cache_that_cannot_fit_is_refused_before_the_memmap(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    filled = []
    with pytest.raises(DiskFullError, match="images.npy .*it needs 1000.0 KB, 1000 B free"):
        build_cache(
            tmp_path / "images.npy",
            (1000, 1, 32, 32),
            lambda o, b: filled.append(1),
            desc="c",
            progress=False,
        )
    assert filled == [] and list(tmp_path.iterdir()) == []


# ---- train.evaluate ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    VAE(VAEConfig.preset("dsprites")).save_pretrained(folder, metadata={"dataset": "dsprites", "beta": 4.0})
    return folder


def _evaluate(capsys, model_dir, output) -> tuple[int, str, str]:
    code = evaluate.main(
        [
            "--checkpoint",
            str(model_dir),
            "--iw-samples",
            "2",
            "--num-images",
            "2",
            "--latent-images",
            "16",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_on_a_full_tmpfs_prints_every_result_then_one_line(small_disk, model_dir, capsys):
    disk = small_disk("1m")
    fill(disk)
    code, out, err = _evaluate(capsys, model_dir, disk / "eval.json")
    assert code == 1
    assert "ELBO" in out and "IW bound (K=2)" in out and "active units" in out  # the results survive
    line = one_line(err)
    assert "the results above were not saved" in line and str(disk / "eval.json") in line, line
    assert "no space left" in line and "nothing was written" in line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_evaluate_keeps_the_previous_report_when_the_disk_fills(tmp_path, model_dir, capsys, monkeypatch):
    target = tmp_path / "eval.json"
    write_text_atomic(target, '{"previous": true}\n')

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    code, out, err = _evaluate(capsys, model_dir, target)
    monkeypatch.undo()
    assert code == 1 and "ELBO" in out
    assert "the previous eval.json is kept" in one_line(err)
    assert json.loads(target.read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_disk_full_error_is_an_oserror_with_the_message_as_its_text(tmp_path):
    e = io.disk_full(tmp_path / "x.bin", needed=3 * 1024 * 1024)
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename == str(tmp_path / "x.bin")
    assert str(e).startswith(f"no space left on the device to write {tmp_path / 'x.bin'} (it needs 3.0 MB, ")


def test_curves_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    from train.curves import main as curves_main

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "heldout_elbo": -90.0 + s, "heldout_kl": 5.0} for s in (10, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    assert curves_main([str(run), "--out", str(tmp_path / "curves.png")]) == 1
    assert "curves.png" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
