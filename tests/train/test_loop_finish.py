"""A run stopped after its final checkpoint but before its final report: `--resume` writes the report.

The window between the last checkpoint and `model.safetensors` is short (the held-out evaluation and the
writes), but a stop there must not leave a folder with no model that `--resume` calls "already finished".
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.loop as loop
from train import checkpoint as ckpt
from train.__main__ import main
from train.config import parse_args

SPRITES = ["--dataset", "dsprites", "--limit", "64", "--batch-size", "16"]
TINY = ["--preset", "mlp", "--latent-dim", "4", "--eval-images", "32", "--num-threads", "1", "--no-progress"]
RUN = [*SPRITES, *TINY, "--steps", "6", "--log-every", "2", "--eval-every", "3"]


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")  # the kernels have their own tests


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def report(out: Path) -> dict:
    """What the final report holds that a rerun must reproduce exactly: the weights and the numbers."""
    weights = load_file(out / "model.safetensors")
    meta = json.loads((out / "config.json").read_text())["metadata"]
    final = [r for r in rows(out) if r.get("final")]
    assert len(final) == 1, final
    numbers = {k: final[0][k] for k in ("step", "eval_recon", "eval_kl", "kl_per_dim", "active_units")}
    return {"weights": weights, "finished": meta["finished"], "steps": meta["steps"], **numbers}


def assert_same_report(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert {k: v for k, v in a.items() if k != "weights"} == {k: v for k, v in b.items() if k != "weights"}


def stopped_in_the_report(*a, **k):
    """A stop inside the final report, as a signal in that window would land: after the checkpoint of the
    last step, before model.safetensors."""
    raise KeyboardInterrupt


@pytest.fixture
def straight(tmp_path):
    out = tmp_path / "straight"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_resume_writes_a_deleted_final_report(straight, capsys):
    expected = report(straight)
    for name in ("model.safetensors", "config.json", "README.md"):
        (straight / name).unlink()
    capsys.readouterr()
    assert main([*RUN, "--out", str(straight), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "final report are missing: writing them now" in err and "already finished" not in err, err
    assert_same_report(report(straight), expected)
    assert report(straight)["finished"] is True and (straight / "README.md").is_file()


def test_a_stop_after_the_last_checkpoint_is_finished_by_resume(straight, tmp_path, monkeypatch, capsys):
    out = tmp_path / "split"
    monkeypatch.setattr(loop, "final_report", stopped_in_the_report)
    assert main([*RUN, "--out", str(out)]) == 130
    assert ckpt.load_checkpoint(out)["step"] == 6 and not (out / "model.safetensors").exists()
    monkeypatch.undo()
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert_same_report(report(out), report(straight))

    # Once complete, another --resume says so and rewrites nothing.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_partial_model_from_an_earlier_stop_is_replaced(straight, tmp_path, monkeypatch):
    # A run stopped at step 3 (partial model written), resumed, and stopped again in its final report:
    # the folder holds step 3's partial model when --resume comes.
    out = tmp_path / "split"
    assert loop.train(parse_args([*RUN, "--out", str(out)]), stop_at=3) == {"step": 3}
    assert json.loads((out / "config.json").read_text())["metadata"]["finished"] is False
    monkeypatch.setattr(loop, "final_report", stopped_in_the_report)
    assert main([*RUN, "--out", str(out), "--resume"]) == 130
    monkeypatch.undo()
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert_same_report(report(out), report(straight))


def test_a_failed_run_is_not_turned_into_a_model_by_resume(tmp_path, monkeypatch, capsys):
    real = loop.make_train_step

    def three_of_four_skipped(*a, **k):
        inner = real(*a, **k)

        def step(batch, i):
            result = inner(batch, i)
            if i % 4 != 0:
                return loop.StepResult(
                    torch.tensor(False),
                    torch.tensor(float("nan")),
                    result.recon,
                    result.kl,
                    torch.tensor(float("inf")),
                    result.beta,
                )
            return result

        return step

    out = tmp_path / "run"
    args = [*SPRITES, *TINY, "--steps", "12", "--max-bad-steps", "100", "--log-every", "4", "--out", str(out)]
    monkeypatch.setattr(loop, "make_train_step", three_of_four_skipped)
    assert main(args) == 3
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 3
    err = capsys.readouterr().err
    assert "9 of its 12 steps were skipped" in err and "no model was saved" in err, err
    assert not (out / "model.safetensors").exists()


def test_a_stopped_resume_removes_the_evaluation_of_the_weights_it_replaced(straight):
    """eval.json measured the finished model; a longer run stopped half-way replaces model.safetensors
    with its partial weights, so that evaluation must go (the app would show it beside other weights)."""
    (straight / "eval.json").write_text(json.dumps({"model": {"steps": 6}, "metrics": {"elbo": -1.0}}))
    argv = [*RUN, "--steps", "12", "--out", str(straight), "--resume"]
    loop.train(parse_args(argv), argv=argv, stop_at=9)
    assert json.loads((straight / "config.json").read_text())["metadata"]["steps"] == 9
    assert not (straight / "eval.json").exists()
