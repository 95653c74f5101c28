"""Suite-wide settings: accelerator-only tests are skipped where the accelerator is absent; wandb stays offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "mps" in item.keywords and not has_mps:
            item.add_marker(pytest.mark.skip(reason="needs an Apple MPS device"))


@pytest.fixture(autouse=True)
def _no_process_group_leaks():
    """A test that leaves a default process group behind (an in-process fit with a strategy that initialises
    torch.distributed) changes the rank every later test resolves: fail it by name, and clean up."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("the test left a torch.distributed process group initialised: destroy it at its end "
                    "(later tests would read its rank and world size)")
