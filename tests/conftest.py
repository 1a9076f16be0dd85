"""Test setup. Environment first: Triton reads TRITON_INTERPRET when a kernel is decorated, and the
Hugging Face libraries read HF_HUB_OFFLINE at import time."""

import os

try:  # torch is imported only after the environment is settled
    import importlib.util

    _has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        # Cheap check that does not import triton-decorated modules.
        import torch

        _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False

if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


# Packages that a GPU machine often lacks (it has torch, triton, numpy, scipy, pytest, pillow, safetensors,
# tqdm and einops): a test module that cannot import one of these is skipped, naming it, instead of stopping
# the whole collection (`bash bench/run_gpu.sh` starts with `pytest -m gpu tests/`).
OPTIONAL_PACKAGES = frozenset(
    {"gradio", "gradio_client", "datasets", "matplotlib", "playwright", "huggingface_hub"}
)


class _ModuleWithOptionalPackages(pytest.Module):
    def collect(self):
        try:
            return super().collect()
        except self.CollectError as e:
            cause = e.__cause__  # pytest raises CollectError from the module's ImportError
            missing = getattr(cause, "name", None) or ""
            if isinstance(cause, ModuleNotFoundError) and missing.partition(".")[0] in OPTIONAL_PACKAGES:
                pytest.skip(f"{self.path.name} needs {missing}, which is not installed")
            raise


def pytest_pycollect_makemodule(module_path, parent):
    return _ModuleWithOptionalPackages.from_parent(parent, path=module_path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs each run, but printed so a failure can be replayed (PYTEST_SEED=...)."""
    seed = int(os.environ.get("PYTEST_SEED", torch.seed() % (2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield
