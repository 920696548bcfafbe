"""Shared fixtures. GPU tests are marked `gpu` and skip cleanly where no CUDA device is visible."""
from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the H100)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed():
    """A fresh seed per test run (never fixed data), printed so a failure can be replayed."""
    import random

    s = random.SystemRandom().randrange(2**31)
    print(f"seed={s}")
    return s
