"""Shared fixtures of the posterior-nas tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """These tests run micro networks, where a second intra-op thread only adds spin-waiting (and on
    a shared, loaded CPU makes them many times slower). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
