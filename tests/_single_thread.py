"""A fixture running torch on one thread for tests of small per-tile/per-slide steps.

On a machine shared with other jobs, two torch threads per process oversubscribe
the cores and slow these tests many times over; one thread is also what the
demo build uses. Import the fixture into a test module to apply it there.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
