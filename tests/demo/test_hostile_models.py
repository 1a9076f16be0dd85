"""Hostile and damaged model folders: each gives one clear error naming the file and the field, allocates
nothing before its sizes are checked against the weights file's header, and never takes the demo down.

The cases are the bundled dSprites β = 1 model (`demo/models/dsprites/beta1`) with one field of its
config.json, eval.json, run_config.json or safetensors header corrupted.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from demo import inference as inf
from demo import text
from vae_triton.model import MAX_CONFIG_BYTES, VAE

BUNDLED = inf.BUNDLED_DIR


@pytest.fixture
def rung(tmp_path) -> Path:
    """A copy of the bundled β = 1 model folder (weights, config.json, eval.json, run_config.json)."""
    return Path(shutil.copytree(BUNDLED / "beta1", tmp_path / "ladder" / "beta1"))


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))  # NaN and inf are written as JSON's NaN / Infinity, as Python does


def edit_config(**fields):
    return lambda folder: edit_json(folder / "config.json", lambda d: d["config"].update(fields))


def edit_metadata(**fields):
    return lambda folder: edit_json(folder / "config.json", lambda d: d["metadata"].update(fields))


def edit_eval(section: str | None, **fields):
    def change(doc):
        (doc if section is None else doc[section]).update(fields)

    return lambda folder: edit_json(folder / "eval.json", change)


def write_text(name: str, content: str):
    return lambda folder: (folder / name).write_text(content)


def edit_header(change):
    """Rewrite the safetensors header (8-byte little-endian length + JSON), keeping the data bytes."""

    def apply(folder):
        path = folder / "model.safetensors"
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        change(header)
        new = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])

    return apply


def set_tensor(name: str, **entry):
    return edit_header(lambda h: h[name].update(entry))


# ---- VAE.from_pretrained ------------------------------------------------------------------------
# case: (corruption, file the error must name, field it must name)
HOSTILE_LOADS = {
    "hidden_dim beyond the bound": (edit_config(hidden_dim=200_000), "config.json", "hidden_dim"),
    "latent_dim 10**30": (edit_config(latent_dim=10**30), "config.json", "latent_dim"),
    "image_channels 10**6": (edit_config(image_channels=10**6), "config.json", "image_channels"),
    "a channel of 10**6": (edit_config(channels=[32, 32, 64, 10**6]), "config.json", "channels"),
    "100 000 MLP layers": (
        edit_config(arch="mlp", mlp_hidden=[16] * 100_000),
        "config.json",
        "mlp_hidden",
    ),
    "wide convs: 10**11 parameters": (
        edit_config(channels=[60_000] * 4),
        "config.json",
        "parameters",
    ),
    "a 5000-digit integer": (
        write_text(
            "config.json", '{"model_type": "vae-triton-conv", "config": {"latent_dim": ' + "9" * 5000 + "}}"
        ),
        "config.json",
        "JSON",
    ),
    "JSON nested 100000 deep": (
        write_text("config.json", "[" * 100_000 + "]" * 100_000),
        "config.json",
        "JSON",
    ),
    "a config.json over the size bound": (
        edit_metadata(padding="x" * MAX_CONFIG_BYTES),
        "config.json",
        "bytes",
    ),
    "a weight stored as integers": (
        set_tensor("to_params.0.weight", dtype="I32"),
        "model.safetensors",
        "to_params.0.weight",
    ),
    "100 000 extra tensors in the header": (
        edit_header(
            lambda h: h.update(
                {f"x{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100_000)}
            )
        ),
        "model.safetensors",
        "unexpected ['x0'",
    ),
    "an unknown dtype in the header": (
        set_tensor("decoder.3.bias", dtype="F128"),
        "model.safetensors",
        "decoder.3.bias",
    ),
    "data offsets that do not fit the shape": (
        set_tensor("decoder.3.bias", data_offsets=[459264, 459272]),
        "model.safetensors",
        "data_offsets",
    ),
    "a shape that is not a list": (
        set_tensor("decoder.3.bias", shape="1"),
        "model.safetensors",
        "decoder.3.bias",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_LOADS)
def test_a_hostile_model_folder_gives_one_error_naming_file_and_field(rung, case):
    corrupt, file, field = HOSTILE_LOADS[case]
    corrupt(rung)
    with pytest.raises(ValueError) as e:
        VAE.from_pretrained(rung)
    message = str(e.value)
    assert str(rung / file) in message and field in message, message
    assert len(message) < 2000, message


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from vae_triton.model import VAE
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        VAE.from_pretrained(sys.argv[1])
        print("loaded")
    except ValueError as e:
        print("ValueError", e)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, "MB")
    """
)


@pytest.mark.parametrize("hidden_dim", [60_000, 200_000])
def test_a_huge_config_is_rejected_before_it_allocates(rung, hidden_dim):
    """hidden_dim 2e5 asked for 1.9 GB (60 000: 0.5 GB) before the weights were found not to match."""
    edit_config(hidden_dim=hidden_dim)(rung)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(rung)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    error, peak = run.stdout.strip().splitlines()
    assert error.startswith("ValueError") and ("hidden_dim" in error or "from_latent" in error), error
    assert int(peak.split()[0]) < 100, f"peak RSS grew by {peak} while loading"


def test_the_bundled_model_still_loads_exactly(rung):
    from safetensors.torch import load_file

    model = VAE.from_pretrained(rung)
    saved = load_file(rung / "model.safetensors")
    assert not model.training and model.metadata["beta"] == 1.0
    assert all(not t.is_meta for t in model.state_dict().values())
    assert all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert v.dtype == saved[k].dtype and v.equal(saved[k]), k


def test_half_precision_weights_load_as_float32(tmp_path):
    from safetensors.torch import save_file

    model = VAE.from_pretrained(BUNDLED / "beta1")
    model.save_pretrained(tmp_path)
    state = {k: v.half() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = VAE.from_pretrained(tmp_path)
    for k, v in loaded.state_dict().items():
        assert v.dtype == model.state_dict()[k].dtype and v.equal(state[k].float()), k


# ---- the demo's ladder ----------------------------------------------------------------------------
# case: (corruption, file the notice must name, field it must name); the rung is skipped, the others stay
BROKEN_RUNGS = {
    "β = inf": (edit_metadata(beta=float("inf")), "config.json", "metadata.beta"),
    "β = NaN": (edit_metadata(beta=float("nan")), "config.json", "metadata.beta"),
    "β = -1": (edit_metadata(beta=-1.0), "config.json", "metadata.beta"),
    "β = 0": (edit_metadata(beta=0), "config.json", "metadata.beta"),
    "β = true": (edit_metadata(beta=True), "config.json", "metadata.beta"),
    "β a string": (edit_metadata(beta="1"), "config.json", "metadata.beta"),
    "steps a list": (edit_metadata(steps=[36000]), "config.json", "metadata.steps"),
    "steps a word": (edit_metadata(steps="many"), "config.json", "metadata.steps"),
    "eval_recon a list": (edit_metadata(eval_recon=[21.8]), "config.json", "metadata.eval_recon"),
    "eval_kl a string": (edit_metadata(eval_kl="23"), "config.json", "metadata.eval_kl"),
    "batch_size a float": (edit_metadata(batch_size=6.4), "config.json", "metadata.batch_size"),
    "dataset a list": (edit_metadata(dataset=["dsprites"]), "config.json", "metadata.dataset"),
    "finished a string": (edit_metadata(finished="yes"), "config.json", "metadata.finished"),
    "run_config β = inf": (
        lambda f: (
            edit_json(f / "config.json", lambda d: d["metadata"].pop("beta")),
            edit_json(f / "run_config.json", lambda d: d.update(beta=float("inf"))),
        ),
        "run_config.json",
        "run_config.beta",
    ),
    "run_config.json not an object": (
        lambda f: (
            edit_json(f / "config.json", lambda d: d["metadata"].pop("beta")),
            (f / "run_config.json").write_text("[1]"),
        ),
        "run_config.json",
        "top level",
    ),
    "a 5000-digit integer in config.json": (
        write_text("config.json", '{"model_type": "vae-triton-conv", "x": ' + "9" * 5000 + "}"),
        "config.json",
        "JSON",
    ),
}


@pytest.fixture
def two_rungs(rung) -> Path:
    """The corrupted β = 1 copy beside an intact copy of the bundled β = 4 model."""
    shutil.copytree(BUNDLED / "beta4", rung.parent / "beta4")
    return rung.parent


def check_pages(ladder: inf.Ladder) -> None:
    """What the page renders from the ladder's files works for every rung (it used to raise at start-up)."""
    text.banner(ladder)
    for r in ladder.rungs:
        text.model_card(r, ladder)
    inf.rate_distortion_points(ladder)


@pytest.mark.parametrize("case", BROKEN_RUNGS)
def test_a_bad_rung_is_skipped_with_a_notice_naming_file_and_field(two_rungs, rung, case):
    corrupt, file, field = BROKEN_RUNGS[case]
    corrupt(rung)
    ladder = inf.load_ladder(two_rungs, "checkpoint")
    assert ladder.betas == [4.0]
    notice = " ".join(ladder.notices)
    assert "beta1" in notice and str(rung / file) in notice and field in notice, notice
    check_pages(ladder)


# case: (corruption, field the notice must name); the rung is served without its evaluation
BROKEN_EVALS = {
    "kl a list": (edit_eval("metrics", kl=[23.1]), "metrics.kl"),
    "iw_log_likelihood a string": (
        edit_eval("metrics", iw_log_likelihood="-40"),
        "metrics.iw_log_likelihood",
    ),
    "mig an object": (edit_eval("metrics", mig={"shape": 0.2}), "metrics.mig"),
    "images a float": (edit_eval("metrics", images=25.6), "metrics.images"),
    "active_units true": (edit_eval("metrics", active_units=True), "metrics.active_units"),
    "metrics a list": (edit_eval(None, metrics=[1, 2]), "metrics"),
    "settings a string": (edit_eval(None, settings="fast"), "settings"),
    "iw_samples in settings a list": (edit_eval("settings", iw_samples=[1000]), "settings.iw_samples"),
    "split a number": (edit_eval(None, split=5), "eval.split"),
    "not JSON": (write_text("eval.json", '{"metrics": {"kl": 1,'), "JSON"),
    "not an object": (write_text("eval.json", "[]"), "top level"),
    # a run resumed and stopped after its evaluation: eval.json measured earlier weights
    "another step": (edit_eval("model", steps=1000), "model.steps"),
}


@pytest.mark.parametrize("case", BROKEN_EVALS)
def test_a_bad_eval_json_hides_only_that_evaluation(two_rungs, rung, case):
    corrupt, field = BROKEN_EVALS[case]
    corrupt(rung)
    ladder = inf.load_ladder(two_rungs, "checkpoint")
    assert ladder.betas == [1.0, 4.0]
    assert ladder.pick(1.0).evaluation == {} and "kl" in ladder.pick(4.0).evaluation
    notice = " ".join(ladder.notices)
    assert "beta1/eval.json" in notice and field in notice, notice
    check_pages(ladder)


UNDEFINED = {
    "iw_log_likelihood null": (edit_eval("metrics", iw_log_likelihood=None), "iw_log_likelihood"),
    "elbo NaN": (edit_eval("metrics", elbo=float("nan")), "elbo"),
    "kl null": (edit_eval("metrics", kl=None, kl_undefined="no images"), "kl"),
    "mig null": (edit_eval("metrics", mig=None), "mig"),
}


@pytest.mark.parametrize("case", UNDEFINED)
def test_null_or_nan_numbers_are_undefined_and_left_out(two_rungs, rung, case):
    """train.evaluate writes null for a metric it could not compute: the card leaves it out."""
    corrupt, name = UNDEFINED[case]
    corrupt(rung)
    ladder = inf.load_ladder(two_rungs, "checkpoint")
    evaluation = ladder.pick(1.0).evaluation
    assert name not in evaluation and "recon_nll" in evaluation and not ladder.notices
    check_pages(ladder)


def test_null_metadata_numbers_are_left_out(two_rungs, rung):
    edit_metadata(eval_recon=None, eval_kl=float("nan"), steps=None)(rung)
    ladder = inf.load_ladder(two_rungs, "checkpoint")
    meta = ladder.pick(1.0).metadata
    assert {"eval_recon", "eval_kl", "steps"}.isdisjoint(meta) and ladder.betas == [1.0, 4.0]
    check_pages(ladder)


# ---- where the app's models come from -----------------------------------------------------------
def test_a_hub_repo_with_no_usable_rung_falls_back_to_the_bundled_ladder(rung, tmp_path, monkeypatch):
    edit_metadata(eval_recon=[1, 2])(rung)
    monkeypatch.setattr(inf, "download_hub_ladder", lambda repo: rung.parent)
    bundled = Path(shutil.copytree(BUNDLED / "beta4", tmp_path / "bundled" / "beta4")).parent
    ladder = inf.resolve_ladder(hub_repo="someone/broken-vae", bundled_dir=bundled)
    assert ladder.origin == "bundled" and ladder.betas == [4.0]
    assert "someone/broken-vae" in ladder.notices[0] and "metadata.eval_recon" in ladder.notices[0]
    assert "someone/broken-vae" in text.banner(ladder)
    check_pages(ladder)


def test_a_checkpoint_with_no_usable_rung_falls_back_loudly(rung, tmp_path):
    edit_metadata(beta=float("inf"))(rung)
    bundled = Path(shutil.copytree(BUNDLED / "beta4", tmp_path / "bundled" / "beta4")).parent
    ladder = inf.resolve_ladder(checkpoint=rung, bundled_dir=bundled)
    assert ladder.origin == "bundled" and ladder.betas == [4.0]
    assert str(rung) in ladder.notices[0] and "metadata.beta" in ladder.notices[0]
    assert "bundled" in ladder.notices[0] and ladder.notices[0] in text.banner(ladder)


def test_with_nothing_usable_anywhere_the_page_says_untrained(rung, tmp_path):
    edit_metadata(beta=float("inf"))(rung)
    ladder = inf.resolve_ladder(checkpoint=rung, bundled_dir=tmp_path / "empty")
    assert ladder.untrained and "UNTRAINED" in text.banner(ladder) and "metadata.beta" in text.banner(ladder)


@pytest.mark.parametrize("beta", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_ladder_never_serves_a_beta_the_slider_cannot_show(beta):
    model = VAE.from_pretrained(BUNDLED / "beta1")
    with pytest.raises(ValueError, match="finite and > 0"):
        inf.Ladder([inf.Rung(beta, model, "x")], "checkpoint", "x")
