import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np
import pytest

import envs  # noqa: F401  (picks MuJoCo's headless GL backend before any test imports dm_control)


@pytest.fixture(scope="session")
def toy_file(tmp_path_factory) -> str:
    """Two 1000-step episodes of random walker-shaped transitions as a user's .npz dataset."""
    rng = np.random.default_rng(0)
    n = 2000
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, observations=rng.normal(size=(n, 24)), actions=rng.uniform(-1, 1, (n, 6)),
             rewards=rng.uniform(size=n), next_observations=rng.normal(size=(n, 24)),
             timeouts=(np.arange(n) % 1000) == 999)
    return str(path)


def pytest_addoption(parser):
    parser.addoption("--update-thresholds", action="store_true",
                     help="rewrite tests/regression/thresholds.json from fresh runs (intended changes only)")
