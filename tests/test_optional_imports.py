"""What runs on a GPU machine that has only torch, triton, numpy, scipy, pytest, pillow, safetensors, tqdm
and einops: `pytest -m gpu` collects (the modules that need the app's or the data's packages are skipped,
naming the package), and `bash bench/run_gpu.sh --dry-run` passes. The packages such a machine lacks are
hidden from import in the subprocesses by a `sitecustomize` module put first on PYTHONPATH."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Installed here (requirements*.txt), absent on a bare GPU machine.
HIDDEN = ("gradio", "gradio_client", "datasets", "matplotlib", "playwright", "huggingface_hub")

SITECUSTOMIZE = '''
import os
import sys

HIDDEN = frozenset(os.environ["VAE_TRITON_TEST_HIDE"].split(","))


class _Hide:
    """Wraps a meta-path finder: the hidden packages are not found, as if they were not installed."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
'''


@pytest.fixture
def bare_gpu_env(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(hide), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    hidden = ",".join(HIDDEN)
    return {**os.environ, "PYTHONPATH": path, "VAE_TRITON_TEST_HIDE": hidden, "PYTHON": sys.executable}


def _run(command, env, timeout=120):
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_hidden_packages_are_hidden(bare_gpu_env):
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(n) for n in sys.argv[1:]))"
    r = _run([sys.executable, "-c", probe, *HIDDEN], bare_gpu_env)
    assert r.returncode == 0, r.stderr
    r = _run([sys.executable, "-c", "import gradio"], bare_gpu_env)
    assert "ModuleNotFoundError: No module named 'gradio'" in r.stderr


@pytest.mark.slow
def test_gpu_tests_collect_without_the_apps_packages(bare_gpu_env):
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    r = _run([*command, "tests/"], bare_gpu_env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "error" not in out.lower().split("short test summary info")[-1], out[-4000:]
    assert "test_ops_gpu.py::" in out, out[-4000:]
    collected = re.search(r"(\d+)/\d+ tests collected", out)
    assert collected and int(collected.group(1)) >= 10, out[-2000:]
    for module, package in (("test_demo.py", "gradio"), ("test_app_client.py", "gradio_client")):
        assert f"{module} needs {package}, which is not installed" in out, out[-4000:]


@pytest.mark.slow
def test_run_gpu_dry_run_passes_without_the_apps_packages(bare_gpu_env, tmp_path):
    out_dir = tmp_path / "run_gpu"
    r = _run(["bash", "bench/run_gpu.sh", "--dry-run", str(out_dir)], bare_gpu_env, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = (out_dir / "summary.txt").read_text().splitlines()
    steps = [line for line in summary if " rc=" in line]
    assert len(steps) == 8 and all(" rc=0 " in line for line in steps), summary
    assert "bench.bench_train imports and parses its flags" in (out_dir / "train.log").read_text()
    assert "tests collected" in (out_dir / "pytest-gpu.log").read_text()
