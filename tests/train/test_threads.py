"""The CPU thread count of `python -m train` and `python -m train.evaluate`: adaptive by default, fixed
with `--num-threads`, and a count that changes between steps leaves the results bit-identical."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train import evaluate, threads
from train import loop as train_loop
from train.__main__ import main
from train.config import parse_args
from train.loop import train
from vae_triton.cpu_threads import AdaptiveThreads
from vae_triton.model import VAE, VAEConfig

RUN = (
    "--dataset dsprites --limit 96 --batch-size 16 --steps 14 --hflip --lr-schedule cosine "
    "--kl-warmup-steps 5 --log-every 3 --eval-every 100 --checkpoint-every 4 --seed 7 "
    "--latent-dim 4 --eval-images 32 --num-threads 1 --no-progress"
).split()


TRAIN_STEP = train_loop._train_step


@pytest.fixture(autouse=True)
def torch_ops_and_threads(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")  # the trainer's CPU path, not the Triton interpreter
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_controller_is_adaptive_only_without_num_threads_on_a_single_cpu_process():
    assert threads.thread_controller(None).adapt
    fixed = threads.thread_controller(1)
    assert not fixed.adapt and fixed.threads == torch.get_num_threads() == 1
    assert not threads.thread_controller(None, "cuda").adapt  # no host timing of device work
    assert not threads.thread_controller(None, compiled=True).adapt  # Inductor keeps its compiled count
    assert not threads.thread_controller(None, world=2).adapt  # every rank would time one rank's probe
    with pytest.raises(ValueError, match="--num-threads"):
        threads.thread_controller(0)


def drive_threads(monkeypatch, adaptive=True) -> list[int]:
    """Drive each run's steps through an `AdaptiveThreads` as the loop does (the gradient check on the run's
    model and batch shape, then `observe` after every step), on a fake quiet machine where 2 threads are
    1.25× faster than 1, with windows of 2 steps so that 14 steps see switches; or, with `adaptive=False`,
    flip the count after every step regardless. Returns the count each step ran at."""
    used, step, state = [], TRAIN_STEP, {}

    def driven(run):
        if run.step == run.start:  # a new run or a resumed one: a new process, a new controller
            state["threads"] = AdaptiveThreads(
                1, candidates=(1, 2), window_s=0.02, probe_s=0.01, probe_every_s=0.02, budget=0.9
            )
            shape = (run.cfg.batch_size, *run.ds.image_shape)
            state["threads"].require_exact(threads.model_check(run.model, shape))
        if not adaptive:
            torch.set_num_threads(1 + run.step % 2)
        used.append(torch.get_num_threads())
        synced = step(run)
        state["threads"].observe(0.01 if torch.get_num_threads() == 2 else 0.0125)
        return synced

    monkeypatch.setattr(train_loop, "_train_step", driven)
    return used


def weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


def losses(out: Path) -> list[float]:
    return [
        r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


@pytest.mark.parametrize("preset", ["mlp", "dsprites"])
def test_an_adaptive_count_leaves_the_run_and_its_resume_bit_identical(tmp_path, monkeypatch, preset):
    fixed, adaptive, resumed = tmp_path / "fixed", tmp_path / "adaptive", tmp_path / "resumed"
    args = [*RUN, "--preset", preset]
    assert main([*args, "--out", str(fixed)]) == 0  # one thread throughout
    used = drive_threads(monkeypatch)
    assert main([*args, "--out", str(adaptive)]) == 0
    assert used[:4] == [1, 1, 1, 1] and used.count(2) >= 7, used  # it switched to 2, and probed 1 again
    train(parse_args([*args, "--out", str(resumed)]), stop_at=7)
    assert main([*args, "--out", str(resumed), "--resume"]) == 0
    a, b, c = weights(fixed), weights(adaptive), weights(resumed)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert losses(fixed) == losses(adaptive) and len(losses(fixed)) == 5


def test_where_the_count_changes_the_bits_the_count_stays_fixed(tmp_path, monkeypatch):
    # The `small` preset's convolution weight gradients differ in the last bits between 1 and 2 threads
    # (oneDNN splits their sums by thread): a count switched every step changes the weights ...
    args = [*RUN, "--preset", "small"]
    assert main([*args, "--out", str(tmp_path / "fixed")]) == 0
    flipped = drive_threads(monkeypatch, adaptive=False)
    assert main([*args, "--out", str(tmp_path / "flipped")]) == 0
    assert flipped == [1, 2] * 7
    a, b = weights(tmp_path / "fixed"), weights(tmp_path / "flipped")
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # ... so the gradient check keeps the adaptive count at its start: the same run as a fixed one.
    used = drive_threads(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "checked")]) == 0
    assert used == [1] * 14
    c = weights(tmp_path / "checked")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_evaluate_with_an_adaptive_count_that_switches_every_batch_reports_the_same_numbers(
    tmp_path, monkeypatch, capsys
):
    model = tmp_path / "model"
    VAE(VAEConfig.preset("dsprites", latent_dim=4)).save_pretrained(model, metadata={"dataset": "dsprites"})
    args = ["--checkpoint", str(model), "--iw-samples", "3", "--num-images", "8", "--latent-images", "16"]
    args += ["--batch-size", "2", "--no-progress"]
    assert evaluate.main([*args, "--num-threads", "1", "--output", str(tmp_path / "fixed.json")]) == 0

    class Flipper:  # a controller switching at every batch boundary, as often as one can
        adapt, threads, counts = True, 1, []

        def require_exact(self, compute):
            return True

        def tick(self):
            self.threads = 3 - self.threads
            torch.set_num_threads(self.threads)
            self.counts.append(self.threads)

    flipper = Flipper()
    monkeypatch.setattr(evaluate, "thread_controller", lambda requested, device: flipper)
    assert evaluate.main([*args, "--output", str(tmp_path / "adaptive.json")]) == 0
    assert flipper.counts == [2, 1, 2, 1]  # one tick per batch of 2 of the 8 images
    fixed, adaptive = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("fixed", "adaptive"))
    assert fixed["metrics"] == adaptive["metrics"]
    assert (fixed["num_threads_adaptive"], adaptive["num_threads_adaptive"]) == (False, True)
    capsys.readouterr()


def test_a_default_cpu_run_adapts_only_where_the_bits_allow(tmp_path):
    base = "--dataset dsprites --limit 32 --batch-size 16 --steps 2 --latent-dim 4 --eval-images 16".split()
    several = min(threads.TORCH_DEFAULT_THREADS, threads.available_cores()) > 1  # else nothing to switch
    for preset, adaptive in (("mlp", several), ("small", False)):
        assert main([*base, "--no-progress", "--preset", preset, "--out", str(tmp_path / preset)]) == 0
        assert VAE.from_pretrained(tmp_path / preset).metadata["num_threads_adaptive"] is adaptive
    fixed = tmp_path / "fixed"
    assert main([*base, "--no-progress", "--preset", "mlp", "--num-threads", "1", "--out", str(fixed)]) == 0
    meta = VAE.from_pretrained(fixed).metadata
    assert (meta["num_threads"], meta["num_threads_adaptive"]) == (1, False)
