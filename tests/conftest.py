"""Shared test set-up.

Without a GPU the Triton kernels run under Triton's interpreter: ``TRITON_INTERPRET`` is read when
``@triton.jit`` runs, so it is set here, before any test module imports ``triton_embed``. With a GPU the
same tests run natively on CUDA tensors.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Runtime tuning would time every config on the first call of each shape: the tests use the defaults.
os.environ.setdefault("TRITON_EMBED_AUTOTUNE", "0")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile(
    "sweep",
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels under test run: CUDA when present, else the CPU under the interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _auto_backend():
    """Every test starts on the 'auto' backend with the index check on, whatever the last one set."""
    import triton_embed

    triton_embed.set_backend("auto")
    triton_embed.set_index_check(True)
    yield
    triton_embed.set_backend("auto")
    triton_embed.set_index_check(True)


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Kernel outputs start as NaN in every test: unwritten elements cannot look right."""
    from triton_embed.runtime import dispatch as _dispatch

    _dispatch.set_poison(True)
    yield
    _dispatch.set_poison(False)


def pytest_collection_modifyitems(config, items):
    """``multi_gpu`` tests on a machine with CUDA but fewer than two GPUs: skipped, saying why (on the CPU they
    run, with gloo)."""
    if not HAS_CUDA or torch.cuda.device_count() >= 2:
        return
    skip = pytest.mark.skip(reason=f"needs 2 CUDA GPUs (NCCL, one rank per GPU); this machine has "
                                   f"{torch.cuda.device_count()}")
    for item in items:
        if "multi_gpu" in item.keywords:
            item.add_marker(skip)
