"""One run per folder, and only into folders that are ours: the `--out` lock (two real processes), an
empty `--out`, files vae-triton did not write, checkpoint pairs that prove they belong together, and
saved bytes that are the same in every process."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import train.checkpoint as ckpt
from train.__main__ import main as train_main
from train.paths import (
    LOCK_NAME,
    OutputPathError,
    RunFolderBusyError,
    check_output_dir,
    foreign_files,
    lock_run_folder,
)
from vae_triton.model import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[2]
BUNDLED_RUN = REPO / "demo" / "models" / "dsprites" / "beta4"  # written by `python -m train`
SPRITES = (
    "--dataset dsprites --limit 64 --batch-size 16 --preset small --latent-dim 4 --eval-images 32 "
    "--num-threads 1 --steps 2 --no-progress"
).split()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _tree(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the lock --------------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys
    from train.paths import lock_run_folder
    with lock_run_folder(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()  # hold the folder until the test closes stdin (or kills us)
    """
)


def _hold(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    line = proc.stdout.readline()
    assert line == "locked\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def test_a_second_run_on_a_locked_folder_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "run"
    first = _hold(out)
    try:
        with pytest.raises(RunFolderBusyError, match=rf"in use by another run \(PID {first.pid} on ") as e:
            with lock_run_folder(out):
                pytest.fail("the lock was taken twice")
        assert "\n" not in str(e.value) and "--out" in str(e.value)
        # A third process is refused just the same (the lock is the OS's, not this process's).
        third = subprocess.run(
            [sys.executable, "-c", HOLDER, str(out)],
            input="",
            capture_output=True,
            text=True,
            env=_env(),
            cwd=REPO,
            timeout=120,
        )
        assert third.returncode != 0 and f"PID {first.pid}" in third.stderr, third.stderr
    finally:
        first.kill()
        first.wait()
    # kill -9 released it: the folder is free again, with no cleanup needed.
    with lock_run_folder(out) as folder:
        assert folder == out and (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists()


def test_the_lock_ends_with_its_run_and_a_refused_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="refused"):
        with lock_run_folder(out):
            raise RuntimeError("refused before the first write")
    assert not out.exists()  # it created the folder and wrote nothing: gone again
    with lock_run_folder(out):
        (out / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # the run's file stays, the lock goes
    holder = _hold(out)  # a normal exit frees the folder for the next run
    holder.communicate("")
    assert holder.returncode == 0


def test_other_ranks_do_not_lock(tmp_path):
    with lock_run_folder(tmp_path / "run") as main_rank, lock_run_folder(tmp_path / "run", enabled=False):
        assert main_rank.is_dir() and (main_rank / LOCK_NAME).is_file()
    with lock_run_folder(tmp_path / "other", enabled=False) as other:
        assert other == tmp_path / "other" and not other.exists()  # rank 0 creates and locks the folder


# ---- empty --out and files that are not ours -----------------------------------------------------------
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_out_is_refused(empty, tmp_path):
    for check in (check_output_dir, lambda p: lock_run_folder(p).__enter__()):
        with pytest.raises(OutputPathError, match="--out is empty: give a path, e.g. --out runs/dsprites"):
            check(empty)
    assert list(tmp_path.iterdir()) == []


def test_out_empty_run_from_the_repo_root_leaves_its_readme_alone(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "README.md", project / "README.md")  # a Space header, not a model card
    monkeypatch.chdir(project)
    before = _tree(project)
    code = train_main([*SPRITES, "--out", ""])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "README.md" in err or "--out is empty" in err
    assert _tree(project) == before


FOREIGN = {
    "README.md": b"# My project\n\nNotes I keep.\n",
    "config.json": b'{"model_type": "bert", "hidden_size": 768}\n',
    "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}',
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_a_run_refuses_a_folder_holding_a_file_it_did_not_write(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(FOREIGN[name])
    before = _tree(out)
    code = train_main([*SPRITES, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and name in err and "did not write" in err and "Traceback" not in err, err
    assert _tree(out) == before


def test_files_written_by_vae_triton_are_recognised(tmp_path):
    assert foreign_files(BUNDLED_RUN) == []  # a model card, config.json and weights from `python -m train`
    VAE(VAEConfig.preset("small")).save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text((BUNDLED_RUN / "README.md").read_text())
    assert foreign_files(tmp_path) == [] and check_output_dir(tmp_path) == tmp_path
    (tmp_path / "README.md").write_text("---\ntitle: my Space\n---\nlibrary_name: vae-triton\n")
    assert foreign_files(tmp_path) == [tmp_path / "README.md"]  # the marker counts only in the front matter


# ---- checkpoint pairs ---------------------------------------------------------------------------------
def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 6)).square().sum().backward()
    opt.step()
    return model, opt


def test_a_weights_and_state_pair_from_two_runs_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt.save_checkpoint(a, *_model_and_optimizer(1), 4, {"run": "a"})
    ckpt.save_checkpoint(b, *_model_and_optimizer(2), 4, {"run": "b"})
    assert ckpt.load_checkpoint(a)["run_config"] == {"run": "a"}  # a whole pair loads
    for name in ("step-00000004.state.pt", "step-00000004.safetensors"):
        shutil.copy(a / "checkpoints" / name, tmp_path / "saved")
        shutil.copy(b / "checkpoints" / name, a / "checkpoints" / name)  # the other run's half
        with pytest.raises(ckpt.CheckpointError, match="are not one checkpoint: .* SHA-256") as e:
            ckpt.load_checkpoint(a)
        assert "two runs" in str(e.value) and "\n" not in str(e.value)
        shutil.copy(tmp_path / "saved", a / "checkpoints" / name)
    latest = a / "checkpoints" / "latest.json"
    pointer = json.loads(latest.read_text())
    latest.write_text(json.dumps({**pointer, "weights_sha256": "0" * 64}))  # a pointer from elsewhere
    with pytest.raises(ckpt.CheckpointError, match="latest.json records weights"):
        ckpt.load_checkpoint(a)


def test_a_checkpoint_that_records_no_hash_still_loads(tmp_path):
    model, opt = _model_and_optimizer(3)
    d = ckpt.save_checkpoint(tmp_path, model, opt, 2, {})
    state_file = d / "step-00000002.state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["weights_sha256"]  # as written before the pair was hashed
    torch.save(state, state_file)
    pointer = json.loads((d / "latest.json").read_text())
    del pointer["weights_sha256"]
    (d / "latest.json").write_text(json.dumps(pointer))
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded["step"] == 2 and torch.equal(loaded["model"]["weight"], model.weight.detach())


# ---- byte-deterministic saves ---------------------------------------------------------------------------
SAVER = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    import torch
    import train.checkpoint as ckpt
    from vae_triton.io import write_safetensors
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters())
    names = ["step", "format", "model_type", "beta", "dataset", "seed", "b", "a"]
    meta = {k: str(i) for i, k in enumerate(names)}
    out = Path(sys.argv[1])
    print(write_safetensors(out / "model.safetensors", model.state_dict(), meta))
    ckpt.save_checkpoint(out, model, opt, 7, {})
    print(hashlib.sha256((out / "checkpoints" / "step-00000007.safetensors").read_bytes()).hexdigest())
    """
)


def test_the_same_weights_saved_by_two_processes_have_one_sha256(tmp_path):
    from safetensors.torch import load_file

    hashes = []
    for seed in ("1", "2"):
        env = {**_env(), "PYTHONHASHSEED": seed}
        r = subprocess.run(
            [sys.executable, "-c", SAVER, str(tmp_path / seed)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        hashes.append(r.stdout.split())
        on_disk = hashlib.sha256((tmp_path / seed / "model.safetensors").read_bytes()).hexdigest()
        assert on_disk == hashes[-1][0]
    assert hashes[0] == hashes[1]
    # Still an ordinary safetensors file for safetensors' own reader, metadata and all.
    from safetensors import safe_open

    with safe_open(tmp_path / "1" / "model.safetensors", "pt") as f:
        assert f.metadata()["dataset"] == "4"
    names = set(load_file(tmp_path / "1" / "model.safetensors"))
    assert names == {"0.weight", "0.bias", "1.weight", "1.bias"}


# ---- end to end: `python -m train` takes the lock; VAE.save_pretrained writes deterministic bytes ----
def test_two_python_m_train_on_one_out_the_second_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "train",
        *SPRITES[:-3],
        "--steps",
        "400",
        "--log-every",
        "1",
        "--out",
        str(out),
    ]
    env = {**_env(), "VAE_TRITON_BACKEND": "torch", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [*args, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert first.stdout.readline()  # its start block: it holds the lock by now
        second = subprocess.run(
            [*args, "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
        )
        assert second.returncode == 2 and f"in use by another run (PID {first.pid} " in second.stderr, (
            second.stderr
        )
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()


def test_save_pretrained_gives_the_same_bytes_in_two_processes(tmp_path):
    script = (
        "import sys, torch\nfrom vae_triton.model import VAE, VAEConfig\ntorch.manual_seed(0)\n"
        "VAE(VAEConfig.preset('small')).save_pretrained(sys.argv[1], metadata={'beta': 2.0})\n"
    )
    digests = []
    for seed in ("1", "2", "3", "4"):
        r = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / seed)],
            capture_output=True,
            text=True,
            env={**_env(), "PYTHONHASHSEED": seed},
            cwd=REPO,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        digests.append(hashlib.sha256((tmp_path / seed / "model.safetensors").read_bytes()).hexdigest())
    assert len(set(digests)) == 1
