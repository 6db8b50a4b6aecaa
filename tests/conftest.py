"""Test set-up: quiet TensorFlow, two virtual CPU devices, small generated datasets shared per session."""

import os
import subprocess
import sys

import pytest

from engine import quiet

quiet.import_tensorflow_quietly()

from datasets.sources import shapes  # noqa: E402
from engine import devices  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

# Two logical CPUs before the runtime starts, so in-process tests can use MirroredStrategy.
devices._split_cpu(2)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> str:
    """A small shapes dataset (256 train / 64 val, 64 px), generated once per test session."""
    return shapes.generate(str(tmp_path_factory.mktemp("data") / "shapes"), num_train=256, num_val=64,
                           image_size=64, seed=0)


def run_launch(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python launch.py ARGS` from the repository and returns the finished process."""
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
