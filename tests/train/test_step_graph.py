"""The training step (train/step.py) is graph-safe, keeps its schedules, and computes what plain torch does.

A CUDA graph replays device work only: any host synchronisation inside the step (`.item()`, `bool(t)`,
`.cpu()`, `.tolist()`, data-dependent shapes such as `nonzero` or boolean-mask indexing, tensors built from
host data) would fail the capture or freeze a value into the graph. `HostSyncDetector` watches every
torch call of the step on the CPU — at the Python API (TorchFunctionMode) and at the ATen ops underneath
(TorchDispatchMode) — so CI keeps the step capturable without a GPU. The tests marked `gpu` check the
capture itself (`pytest -m gpu tests/train/test_step_graph.py` on a CUDA machine).
"""

import contextlib
import json
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from train import checkpoint as ckpt
from train.config import RunConfig, parse_args
from train.data import BatchSource, ImageDataset
from train.loop import train
from train.step import GRAPH_WARMUP_STEPS, StepResult, StepStats, make_optimizer, make_train_step
from vae_triton.model import VAE, VAEConfig

aten = torch.ops.aten
TINY_MODEL = dict(image_size=16, channels=(4, 8), hidden_dim=8, latent_dim=3)

# ---- the detector -------------------------------------------------------------------------------------
_HOST_METHODS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}
_READS_A_VALUE = {aten._local_scalar_dense.default, aten.is_nonzero.default}
_MASK_DTYPES = (torch.bool, torch.uint8)


class HostSyncDetector:
    """Context manager recording every torch call that needs the host to see device data (a sync on a GPU).

    `found` lists one line per offending call. Python-level methods (`.item()`, `.cpu()`, `.tolist()`,
    `bool(t)`, ...) are seen by a TorchFunctionMode even on CPU tensors, where they cost nothing; the ATen
    ops under every call — also inside torch's own code (the optimizer, clipping, autograd) — by a
    TorchDispatchMode: value reads (`_local_scalar_dense`, `is_nonzero`), ops whose output shape depends
    on the data (ATen's `dynamic_output_shape` / `data_dependent_output` tags: nonzero, masked_select,
    unique, ...), boolean-mask indexing, tensors made from host data (`lift_fresh`, e.g. `torch.tensor`)
    and copies between devices.
    """

    def __init__(self):
        self.found: list[str] = []
        outer = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in _HOST_METHODS and args and isinstance(args[0], torch.Tensor):
                    outer.found.append(f"Tensor.{name}()")
                return func(*args, **(kwargs or {}))

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                why = outer._why(func, args, kwargs)
                if why:
                    outer.found.append(f"{func}: {why}")
                return func(*args, **kwargs)

        self._modes = (Functions(), Ops())

    @staticmethod
    def _why(func, args, kwargs) -> str | None:
        if func in _READS_A_VALUE:
            return "reads a tensor value on the host"
        if func is aten.index.Tensor:  # tagged dynamic, but only a boolean mask needs a nonzero (a sync)
            masks = [i for i in args[1] if isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES]
            return "boolean-mask indexing (a data-dependent shape)" if masks else None
        if torch.Tag.dynamic_output_shape in func.tags or torch.Tag.data_dependent_output in func.tags:
            return "its output depends on the data"
        if func is aten.lift_fresh.default:
            return "a tensor made from host data (a host→device copy on CUDA)"
        if func is aten._to_copy.default and "device" in kwargs and kwargs["device"] != args[0].device:
            return f"a copy {args[0].device} → {kwargs['device']}"
        if func is aten.copy_.default and args[0].device != args[1].device:
            return f"a copy {args[1].device} → {args[0].device}"
        return None

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


# ---- helpers --------------------------------------------------------------------------------------
def _model(seed: int = 0, **overrides) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig.preset("small", **{**TINY_MODEL, **overrides}))


def _batches(n: int, batch: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8, generator=g) for _ in range(n)]


def _cfg(**kw) -> RunConfig:
    base = dict(
        steps=8,
        preset="small",
        batch_size=4,
        kl_warmup_steps=5,
        lr_schedule="cosine",
        free_bits=0.05,
        grad_clip=5.0,  # small enough that clipping is active on every step
        lr=3e-3,
        weight_decay=0.01,
    )
    return RunConfig(**{**base, **kw})


@pytest.fixture
def torch_ops(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")


# ---- 1. no host synchronisation inside a step -------------------------------------------------------
@pytest.mark.parametrize(
    "backend,precision",
    [("default", "fp32"), ("torch", "bf16")],  # default: the Triton kernels CI ships; torch: the reference
)
def test_the_default_step_never_syncs_with_the_host(backend, precision, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    model = _model(sigma="scalar")  # a learned σ: a parameter we can poison to exercise the skip guard
    cfg = _cfg(precision=precision)
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lambda line: None)
    results = []
    for i, batch in enumerate(_batches(6)):
        if i == 3:  # one non-finite step: the skip guard must decide on the device too
            with torch.no_grad():
                model.log_sigma.fill_(float("nan"))
        with HostSyncDetector() as detector:
            result = step(batch, i)
            results.append(result)
        assert detector.found == [], f"step {i}: {detector.found}"
        if i == 3:
            with torch.no_grad():
                model.log_sigma.fill_(0.0)
    # The steps did what the detector watched them do: warm-up β, cosine lr, clipping, one skip.
    assert [r.beta for r in results] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert results[0].lr == pytest.approx(3e-3) and results[5].lr < results[1].lr < 3e-3
    assert [bool(r.ok) for r in results] == [True, True, True, False, True, True]
    assert all(float(r.grad_norm) > cfg.grad_clip for r in results if bool(r.ok))
    good, skipped, run, longest = step.stats.counts.tolist()
    assert (good, skipped, run, longest) == (5, 1, 0, 1)


@pytest.mark.parametrize(
    "inject,expected",
    [
        (lambda loss: loss.item(), "_local_scalar_dense"),
        (lambda loss: bool(loss > 0), "Tensor.__bool__()"),
        (lambda loss: loss.cpu(), "Tensor.cpu()"),
        (lambda loss: loss.reshape(1).tolist(), "Tensor.tolist()"),
        (lambda loss: torch.nonzero(loss.reshape(1)), "nonzero"),
        (lambda loss: loss.reshape(1)[loss.reshape(1) > 0], "boolean-mask"),
        (lambda loss: loss + torch.tensor(1.0), "host data"),
    ],
    ids=["item", "bool", "cpu", "tolist", "nonzero", "mask", "tensor"],
)
def test_the_detector_catches_an_injected_sync(inject, expected, torch_ops):
    model = _model()
    cfg = _cfg()
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lambda line: None)
    forward = model.forward

    def forward_with_a_sync(*args, **kwargs):
        out = forward(*args, **kwargs)
        inject(out.loss.detach())
        return out

    model.forward = forward_with_a_sync
    with HostSyncDetector() as detector:
        step(_batches(1)[0], 0)
    assert any(expected in line for line in detector.found), detector.found


# ---- 2. the same numbers as a plain torch loop ------------------------------------------------------
def test_device_tensor_schedules_match_a_plain_torch_loop_bitwise(torch_ops):
    """β and the lr as device tensors change nothing: a textbook loop (torch.optim.AdamW with a float
    rate, β a Python float, zero_grad(set_to_none=True)) gives bitwise the same losses and weights.
    The fused AdamW reads a tensor rate as float32, so the reference is given the float32-rounded rate."""
    total, warmup, peak, clip = 9, 4, 3e-3, 5.0
    cfg = _cfg(steps=total, kl_warmup_steps=warmup, lr=peak, grad_clip=clip)
    batches = _batches(total)

    model = _model()
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lambda line: None)
    torch.manual_seed(42)
    ours = [step(b, i).loss.clone() for i, b in enumerate(batches)]

    ref = _model()
    opt = torch.optim.AdamW(ref.parameters(), lr=peak, weight_decay=cfg.weight_decay, fused=True)
    torch.manual_seed(42)
    theirs = []
    for i, b in enumerate(batches):
        beta = cfg.beta * min(1.0, (i + 1) / warmup)
        lr = peak * (1 + math.cos(math.pi * i / total)) / 2
        opt.param_groups[0]["lr"] = torch.tensor(lr, dtype=torch.float32).item()  # fp32, as on the device
        x = b.float() / 255
        out = ref(x.contiguous(memory_format=torch.channels_last), beta=beta, free_bits=cfg.free_bits)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        theirs.append(out.loss.detach())
    assert torch.equal(torch.stack(ours), torch.stack(theirs)), (ours, theirs)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_stats_count_good_skipped_and_the_longest_bad_run():
    stats = StepStats("cpu")
    pattern = [True, False, False, True, False, True]
    for i, ok in enumerate(pattern):
        v = torch.tensor(float(i))
        stats.add(StepResult(torch.tensor(ok), v, 2 * v, 3 * v, 4 * v, beta=1.0))
    good = [float(i) for i, ok in enumerate(pattern) if ok]
    assert stats.counts.tolist() == [3.0, 3.0, 0.0, 2.0]
    assert stats.sums.tolist() == [sum(good), 2 * sum(good), 3 * sum(good), 4 * sum(good)]


# ---- 3. resume stays bit-exact, also in the middle of the KL warm-up -----------------------------------
def test_resume_inside_the_kl_warmup_is_bit_exact(tmp_path, torch_ops):
    common = (
        "--dataset dsprites --limit 64 --batch-size 16 --steps 7 --kl-warmup-steps 5 --lr-schedule cosine "
        "--free-bits 0.05 --hflip --log-every 1 --eval-every 100 --checkpoint-every 100 --seed 3 "
        "--preset small --latent-dim 4 --no-progress --eval-images 32"
    ).split()
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args([*common, "--out", str(straight)]))
    train(parse_args([*common, "--out", str(split)]), stop_at=3)  # β is 3/5 of the way up
    train(parse_args([*common, "--out", str(split), "--resume"]))

    def rows(out):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "loss" in r]

    a, b = rows(straight), rows(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 8))
    for ra, rb in zip(a, b, strict=True):
        assert (ra["loss"], ra["beta"], ra["lr"]) == (rb["loss"], rb["beta"], rb["lr"]), ra["step"]
    assert [r["beta"] for r in a][:5] == pytest.approx([k / 5 for k in range(1, 6)])
    sa, sb = ckpt.load_checkpoint(straight), ckpt.load_checkpoint(split)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    for p, state in sa["optimizer"]["state"].items():
        assert all(torch.equal(v, sb["optimizer"]["state"][p][n]) for n, v in state.items())


# ---- 4. when the graph is not used, one line says why -----------------------------------------------
def test_cpu_runs_eagerly_and_says_why_once(torch_ops):
    lines = []
    model = _model()
    cfg = _cfg()
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lines.append)
    for i, b in enumerate(_batches(GRAPH_WARMUP_STEPS + 2)):
        step(b, i)
    assert step.graph is None and len(lines) == 1
    assert "CUDA graph: off" in lines[0] and "cpu" in lines[0]
    quiet = []
    make_train_step(model, make_optimizer(model, cfg), _cfg(cuda_graph=False), note=quiet.append)
    assert quiet == []  # asked for no graph: nothing to explain


def test_a_batch_of_another_shape_is_refused(torch_ops):
    model = _model()
    cfg = _cfg()
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lambda line: None)
    step(_batches(1)[0], 0)
    with pytest.raises(ValueError, match="keep the batch size fixed"):
        step(_batches(1, batch=2)[0], 1)
    with pytest.raises(ValueError, match="uint8"):
        step(_batches(1)[0].float(), 1)


def test_batch_source_gathers_into_the_static_input():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8).numpy()
    source = BatchSource(ImageDataset(images), 4, seed=5, hflip=True)
    out = torch.empty(4, 3, 8, 8, dtype=torch.uint8)
    for step in range(5):
        got = source.batch(step, out=out)
        assert got is out and torch.equal(out, source.batch(step))


def test_cli_default_batch_size_depends_on_the_device():
    assert RunConfig(device="cpu").batch_size == 64
    assert RunConfig(device="cuda:1").batch_size == 256
    assert RunConfig(device="cpu", batch_size=8).batch_size == 8
    assert parse_args(["--device", "cpu"]).cuda_graph is True
    assert parse_args(["--no-cuda-graph"]).cuda_graph is False


# ---- the graph orchestration, on the CPU with a stand-in for torch.cuda's graph API ---------------------
class _FakeCapture:
    """Stands in for `torch.cuda.graph(g)`: the body runs (Python cannot skip it), then every tensor of the
    training state is put back — as a real capture, which records the work without running it."""

    def __init__(self, graph, step, fail):
        self.graph, self.step, self.fail = graph, step, fail

    def _state(self):
        step = self.step
        tensors = [*step.module.state_dict().values(), step.stats.sums, step.stats.counts]
        tensors += [p.grad for p in step.params if p.grad is not None]
        tensors += [v for st in step.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        return tensors

    def __enter__(self):
        self.tensors = self._state()
        self.saved = [t.clone() for t in self.tensors]
        self.rng = torch.get_rng_state()

    def __exit__(self, *exc):
        for t, v in zip(self.tensors, self.saved, strict=True):
            t.copy_(v)
        torch.set_rng_state(self.rng)
        if self.fail:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.graph.step = self.step


class _FakeGraph:
    replays = 0

    def replay(self):  # the recorded work: the body, its outputs landing in the static tensors
        _FakeGraph.replays += 1
        for static, new in zip(self.step._static, self.step._body(), strict=True):
            static.copy_(new)


class _FakeStream:
    def wait_stream(self, other):
        pass


def _fake_cuda(monkeypatch, step_holder, fail=False):
    import train.step as step_module

    class Generator:
        restored = 0

        def clone_state(self):
            return "state"

        def graphsafe_set_state(self, state):
            Generator.restored += 1

    cuda = step_module.torch.cuda
    monkeypatch.setattr(step_module.TrainStep, "_graph_blocker", lambda self: None)
    monkeypatch.setattr(cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(cuda, "graph", lambda g: _FakeCapture(g, step_holder[0], fail))
    monkeypatch.setattr(cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cuda, "default_generators", [Generator()])
    return Generator


@pytest.mark.parametrize("capture_fails", [False, True])
def test_capture_and_replay_compute_what_the_eager_step_computes(monkeypatch, torch_ops, capture_fails):
    steps = GRAPH_WARMUP_STEPS + 3
    cfg = _cfg(steps=steps)
    batches = _batches(steps)

    model = _model()
    eager = make_train_step(model, make_optimizer(model, cfg), _cfg(steps=steps, cuda_graph=False))
    torch.manual_seed(9)
    expected = [eager(b, i).loss.clone() for i, b in enumerate(batches)]

    holder, lines = [], []
    generator = _fake_cuda(monkeypatch, holder, fail=capture_fails)
    _FakeGraph.replays = 0
    graphed_model = _model()
    step = make_train_step(graphed_model, make_optimizer(graphed_model, cfg), cfg, note=lines.append)
    holder.append(step)
    torch.manual_seed(9)
    got = [step(b, i).loss.clone() for i, b in enumerate(batches)]

    assert torch.equal(torch.stack(got), torch.stack(expected)), (got, expected)
    for (name, a), b in zip(graphed_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(step.stats.counts, eager.stats.counts)
    if capture_fails:
        assert step.graph is None and _FakeGraph.replays == 0 and generator.restored == 1
        assert len(lines) == 1 and "capture failed at step 3" in lines[0] and "not permitted" in lines[0]
    else:  # one replay per step from the capture on (the capture step included), nothing run twice
        assert step.graph is not None and _FakeGraph.replays == steps - GRAPH_WARMUP_STEPS
        assert lines == [f"CUDA graph: on — the training step was captured at step {GRAPH_WARMUP_STEPS}"]
        assert all(g["capturable"] for g in step.optimizer.param_groups)


# ---- on a GPU: the capture itself ----------------------------------------------------------------------
def _gpu_run(cuda_graph: bool, steps: int, **cfg_kw):
    cfg = _cfg(steps=steps, cuda_graph=cuda_graph, device="cuda", **cfg_kw)
    model = _model().cuda().to(memory_format=torch.channels_last)
    lines = []
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lines.append)
    torch.manual_seed(7)
    losses = []
    for i, b in enumerate(_batches(steps)):
        losses.append(step(b.cuda(), i).loss.clone())
    torch.cuda.synchronize()
    return step, model, torch.stack(losses).cpu(), lines


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    # Some cuDNN backward algorithms accumulate in a nondeterministic order: with them even two eager runs
    # differ in the last bits. The claim under test is that the graph changes nothing else.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_graphed_and_eager_steps_agree_bitwise(precision, deterministic_cudnn):
    steps = GRAPH_WARMUP_STEPS + 8  # warm-up, capture, then replays across the KL warm-up and cosine lr
    g_step, g_model, g_losses, g_lines = _gpu_run(True, steps, precision=precision)
    e_step, e_model, e_losses, _ = _gpu_run(False, steps, precision=precision)
    assert g_step.graph is not None, g_lines
    assert torch.equal(g_losses, e_losses), (g_losses, e_losses)
    for (name, a), b in zip(g_model.state_dict().items(), e_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(g_step.stats.sums, e_step.stats.sums)


@pytest.mark.gpu
def test_gpu_compile_then_capture_runs_or_says_why():
    step, _, losses, lines = _gpu_run(True, GRAPH_WARMUP_STEPS + 3, compile=True)
    assert torch.isfinite(losses).all()
    assert step.graph is not None or any("capture failed" in line for line in lines), lines


@pytest.mark.gpu
def test_gpu_cli_graphed_run_keeps_schedules_and_equals_eager(tmp_path, capsys, deterministic_cudnn):
    common = (
        "--dataset dsprites --limit 512 --batch-size 64 --steps 12 --device cuda --precision fp32 "
        "--kl-warmup-steps 6 --lr-schedule cosine --free-bits 0.02 --log-every 1 --eval-every 100 "
        "--checkpoint-every 100 --seed 5 --preset small --latent-dim 4 --no-progress --eval-images 64"
    ).split()
    runs = {}
    for flag in ("--cuda-graph", "--no-cuda-graph"):
        out = tmp_path / flag
        train(parse_args([*common, flag, "--out", str(out)]))
        lines = (out / "metrics.jsonl").read_text().splitlines()
        runs[flag] = [r for r in map(json.loads, lines) if "loss" in r]
        said = "".join(capsys.readouterr())  # the console's notes go to stdout, warnings to stderr
        if flag == "--cuda-graph":
            assert "CUDA graph: on" in said and "CUDA graph: off" not in said, said
    graphed, eager = runs["--cuda-graph"], runs["--no-cuda-graph"]
    assert [r["beta"] for r in graphed][:6] == pytest.approx([k / 6 for k in range(1, 7)])
    lrs = [r["lr"] for r in graphed]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # the cosine keeps moving in the graph
    assert [r["loss"] for r in graphed] == [r["loss"] for r in eager]


@pytest.mark.gpu
def test_gpu_rendered_dsprites_batches_equal_the_cpu_ones():
    from train.data import get_dataset

    ds = get_dataset("dsprites", "train", limit=4096)
    on_gpu = BatchSource(ds, 64, "cuda", seed=2, hflip=True)
    on_cpu = BatchSource(ds, 64, "cpu", seed=2, hflip=True)
    out = torch.empty(64, 1, 64, 64, dtype=torch.uint8, device="cuda")
    for step in (0, 1, 63, 64, 130):  # across epochs (64 steps each)
        assert torch.equal(on_gpu.batch(step, out=out).cpu(), on_cpu.batch(step)), step
