"""Fixtures for the BioImage.IO tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    """Keep torch polite on shared CPUs (oversubscribed threads make tiny models crawl)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)
