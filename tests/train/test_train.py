"""`python -m train`: learning, outputs, checkpoints, bit-exact resume, crash safety, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train import checkpoint as ckpt
from train.__main__ import main
from train.config import RunConfig, build_parser, parse_args
from train.loop import make_train_step, train
from train.step import beta_at
from vae_triton.model import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[2]
SPRITES_64 = ["--dataset", "dsprites", "--limit", "64", "--batch-size", "16"]  # 4 batches a pass
TINY = ["--preset", "small", "--latent-dim", "4", "--no-progress", "--eval-images", "64"]


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch):
    # The loop tests are about the trainer; the kernels have their own tests, and the Triton
    # interpreter would make hundreds of steps slow.
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def test_loss_goes_down_on_dsprites(tmp_path):
    out = tmp_path / "run"
    args = [
        "--dataset",
        "dsprites",
        "--limit",
        "2048",
        "--steps",
        "250",
        "--batch-size",
        "32",
        "--lr",
        "2e-3",
        "--kl-warmup-steps",
        "100",
        "--log-every",
        "50",
        "--eval-every",
        "250",
        "--checkpoint-every",
        "1000",
        "--out",
        str(out),
        "--no-progress",
        "--num-threads",
        "1",
        "--eval-images",
        "256",
    ]
    assert main(args) == 0
    losses = [r["loss"] for r in records(out) if "loss" in r]
    assert len(losses) == 5
    # Bernoulli NLL of 64×64 binary sprites starts near 4096·ln 2 ≈ 2839 nats, and an empty canvas costs
    # ~560: a model that learned positions and sizes gets far below both.
    assert losses[-1] < 0.25 * losses[0] and losses[-1] < 300, losses


def test_output_directory_has_everything_and_loads(tmp_path):
    out = tmp_path / "run"
    args = [
        "--dataset",
        "dsprites",
        "--limit",
        "256",
        "--steps",
        "6",
        "--batch-size",
        "16",
        "--beta",
        "4",
        "--kl-warmup-steps",
        "4",
        "--log-every",
        "2",
        "--eval-every",
        "3",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "run_config.json",
        "metrics.jsonl",
        "README.md",
        "reconstructions.png",
        "samples.png",
        "grids",
        "checkpoints",
    } <= names
    assert {p.name for p in (out / "grids").iterdir()} == {
        "recon-0000003.png",
        "samples-0000003.png",
        "recon-0000006.png",
        "samples-0000006.png",
    }
    rs = records(out)
    train_rows = [r for r in rs if "loss" in r]
    assert [r["beta"] for r in train_rows] == [2.0, 4.0, 4.0]  # KL warm-up: β·(step/4), then β
    for key in ("recon", "kl", "grad_norm", "img_per_s", "lr"):
        assert all(isinstance(r[key], float) for r in train_rows)
    evals = [r for r in rs if "kl_per_dim" in r]
    assert len(evals[0]["kl_per_dim"]) == 4 and 0 <= evals[0]["active_units"] <= 4
    model = VAE.from_pretrained(out)
    assert model.metadata["beta"] == 4.0 and model.metadata["dataset"] == "dsprites"
    assert model.metadata["steps"] == 6 and model.metadata["finished"]
    assert model.metadata["eval_recon"] > 0 and model.metadata["eval_kl"] >= 0
    card = (out / "README.md").read_text()
    assert "python -m train" in card and "--beta 4" in card and "nats" in card
    assert json.loads((out / "run_config.json").read_text())["beta"] == 4.0


def _weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


def test_resume_is_bit_exact(tmp_path):
    common = [
        "--dataset",
        "dsprites",
        "--limit",
        "96",
        "--batch-size",
        "16",
        "--steps",
        "14",
        "--hflip",
        "--lr-schedule",
        "cosine",
        "--kl-warmup-steps",
        "5",
        "--free-bits",
        "0.1",
        "--log-every",
        "3",
        "--eval-every",
        "100",
        "--checkpoint-every",
        "4",
        "--seed",
        "7",
        *TINY,
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--out", str(straight)]) == 0
    # First half: stop at step 7 as an interrupt would (checkpoint written), then resume to 14.
    train(parse_args([*common, "--out", str(split)]), stop_at=7)
    assert json.loads((split / "checkpoints" / "latest.json").read_text())["step"] == 7
    assert main([*common, "--out", str(split), "--resume"]) == 0
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = ckpt.load_checkpoint(straight), ckpt.load_checkpoint(split)
    assert sa["step"] == sb["step"] == 14
    assert torch.equal(sa["rng"], sb["rng"])
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[p][n], opt_b[p][n]) for p in opt_a for n in opt_a[p])
    steps = [r["step"] for r in records(split) if "loss" in r]
    assert steps == sorted(set(steps))  # no duplicated lines from the first half


def _tiny_model_and_opt(fused=None):
    model = VAE(VAEConfig.preset("small", image_size=16, channels=(4, 8), hidden_dim=8, latent_dim=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    model(torch.rand(2, 3, 16, 16)).loss.backward()
    opt.step()  # populate the optimizer state
    return model, opt


def test_checkpoint_round_trip_and_pruning(tmp_path):
    model, opt = _tiny_model_and_opt()
    torch.manual_seed(123)
    ckpt.save_checkpoint(tmp_path, model, opt, 5, {"beta": 2.0})
    ckpt.save_checkpoint(tmp_path, model, opt, 10, {"beta": 2.0})
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["latest.json", "step-00000010.safetensors", "step-00000010.state.pt"]
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 10 and state["run_config"] == {"beta": 2.0}
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    ckpt.set_rng_state(state["rng"][0])
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _tiny_model_and_opt()
    ckpt.save_checkpoint(tmp_path, model, opt, 4, {})

    def crash(obj, f, *a, **k):
        half = b"PK\x03\x04 half a zip"  # a partial write, then the process dies
        f.write(half) if hasattr(f, "write") else Path(f).write_bytes(half)  # into a buffer or a file
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, model, opt, 8, {})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path)["step"] == 4
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_damaged_or_foreign_checkpoints_give_clear_errors(tmp_path, capsys):
    model, opt = _tiny_model_and_opt()
    d = ckpt.save_checkpoint(tmp_path, model, opt, 3, {})
    state_file = d / "step-00000003.state.pt"
    good = state_file.read_bytes()
    state_file.write_bytes(good[: len(good) // 3])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load_checkpoint(tmp_path)

    # A pickle that would run code (or needs a class) is refused by weights_only loading.
    torch.save({"format": 1, "step": 3, "evil": ckpt.CheckpointError("x")}, state_file)
    with pytest.raises(ckpt.CheckpointError, match="not a vae-triton trainer state|plain values"):
        ckpt.load_checkpoint(tmp_path)
    state_file.write_bytes(good)
    weights = d / "step-00000003.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="safetensors"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "elsewhere")

    # Through the CLI: one line on stderr, exit code 2, no traceback.
    code = main([*SPRITES_64, "--steps", "4", "--out", str(tmp_path), "--resume", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "safetensors" in err and "Traceback" not in err


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_steps_are_skipped(fused):
    # fused=True is the default path: the skip is decided on the device (found_inf), no host sync.
    model, opt = _tiny_model_and_opt(fused)
    step = make_train_step(model, opt, RunConfig(steps=10, preset="small", batch_size=2))
    batch = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert bool(step(batch, 0).ok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[model.log_sigma].items()}
    with torch.no_grad():
        model.log_sigma.fill_(float("nan"))
    assert not bool(step(batch, 1).ok)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k != "log_sigma")
    assert all(torch.equal(moments[k], opt.state[model.log_sigma][k]) for k in moments)
    with torch.no_grad():
        model.log_sigma.fill_(0.0)
    assert bool(step(batch, 2).ok)
    assert not torch.equal(before["decoder.0.0.weight"], model.state_dict()["decoder.0.0.weight"])


def test_too_many_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
    import train.loop as loop

    def always_bad(*a, **k):
        def bad_step(batch, i):
            return loop.StepResult(
                torch.tensor(False),
                torch.tensor(float("nan")),
                torch.tensor(0.0),
                torch.tensor(0.0),
                torch.tensor(float("inf")),
                1.0,
            )

        return bad_step

    out = tmp_path / "run"
    monkeypatch.setattr(loop, "make_train_step", always_bad)
    code = main([*SPRITES_64, "--steps", "20", "--max-bad-steps", "3", "--out", str(out), *TINY])
    assert code == 3
    assert not (out / "model.safetensors").exists()  # nothing trained, nothing claimed


def test_ctrl_c_saves_a_checkpoint_and_a_usable_model(tmp_path, monkeypatch):
    import train.loop as loop

    real = loop.make_train_step

    def interrupt_at_5(*a, **k):
        inner = real(*a, **k)

        def step(batch, i):
            if i == 5:
                raise KeyboardInterrupt
            return inner(batch, i)

        return step

    monkeypatch.setattr(loop, "make_train_step", interrupt_at_5)
    out = tmp_path / "run"
    code = main([*SPRITES_64, "--steps", "20", "--out", str(out), *TINY])
    assert code == 130
    assert ckpt.load_checkpoint(out)["step"] == 5
    partial = VAE.from_pretrained(out)
    assert partial.metadata["steps"] == 5 and partial.metadata["finished"] is False


def test_beta_warmup_schedule():
    cfg = RunConfig(beta=8.0, kl_warmup_steps=4)
    assert [beta_at(cfg, i) for i in range(6)] == [2.0, 4.0, 6.0, 8.0, 8.0, 8.0]
    assert beta_at(RunConfig(beta=3.0), 0) == 3.0


def test_cli_help_lists_every_flag_and_rejects_bad_values(capsys):
    text = build_parser().format_help()
    for flag in (
        "--dataset",
        "--data-dir",
        "--out",
        "--steps",
        "--epochs",
        "--batch-size",
        "--lr",
        "--beta",
        "--latent-dim",
        "--resolution",
        "--preset",
        "--device",
        "--precision",
        "--compile",
        "--seed",
        "--resume",
        "--kl-warmup-steps",
        "--free-bits",
        "--push-to-hub",
    ):
        assert flag in text, flag
    assert "center crop 148" in text
    for bad, word in (
        (["--beta", "-1"], "--beta"),
        (["--steps", "3", "--epochs", "1"], "--epochs"),
        (["--free-bits", "-0.5"], "--free-bits"),
        (["--batch-size", "0"], "--batch-size"),
    ):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2 and word in capsys.readouterr().err


def test_celeba_and_folder_train_through_the_default_ops(tmp_path, monkeypatch):
    monkeypatch.delenv("VAE_TRITON_BACKEND")  # the dispatch CI ships: Triton interpreter on CPU
    from test_data import _celeba_like

    _celeba_like(tmp_path / "celeba", splits=("train", "test"), n=4)
    for name in ("celeba", "folder"):
        out = tmp_path / name
        data = tmp_path / "celeba" if name == "celeba" else tmp_path / "imgs"
        if name == "folder":
            from PIL import Image

            data.mkdir()
            for i in range(4):
                Image.new("RGB", (30 + i, 40), (60 * i, 20, 200)).save(data / f"{i}.png")
        args = [
            "--dataset",
            name,
            "--data-dir",
            str(data),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--resolution",
            "16",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--log-every",
            "1",
            "--out",
            str(out),
            "--preset",
            "small",
            "--no-progress",
            "--eval-images",
            "8",
        ]
        # small preset at 16 px needs ≤ 4 stride-2 layers: it has 3
        assert main(args) == 0, name
        assert VAE.from_pretrained(out).config.image_size == 16


def test_python_dash_m_train_help_runs():
    r = subprocess.run(
        [sys.executable, "-m", "train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert r.returncode == 0 and "--kl-warmup-steps" in r.stdout


def test_epochs_set_the_number_of_steps(tmp_path):
    out = tmp_path / "run"
    args = [*SPRITES_64, "--epochs", "1.5", "--log-every", "1", "--out", str(out), *TINY]
    assert main(args) == 0
    rows = [r for r in records(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # 4 steps per epoch
    assert rows[-1]["epoch"] == 1.5
