import os

import pytest
import torch

# Tests must not depend on how many cores the machine has, and must be quick on CI's two.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every test away from the user's real caches and results."""
    monkeypatch.setenv("BIOPLAUSIBLE_RESULTS", str(tmp_path / "results"))
    if "BIOPLAUSIBLE_DATA" not in os.environ:
        # real fetched data (if any) stays readable through the default cache location
        pass
    yield
