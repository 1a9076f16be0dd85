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
