import pytest
import torch

# One thread: the tests' tensors are small, where extra threads cost more in contention than
# they gain (seen 20x slower convolutions with 2 threads on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every test away from the user's real caches and results."""
    # (BIOPLAUSIBLE_DATA is left alone: real fetched data, if any, stays readable)
    monkeypatch.setenv("BIOPLAUSIBLE_RESULTS", str(tmp_path / "results"))
    yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, loaded once for the whole session."""
    from bioplausible.data import load

    return load("digits")
