"""Test set-up: quiet TensorFlow, two virtual CPU devices, small generated datasets shared per session."""

import os
import socket
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


def run_in_process(*flags: str) -> dict:
    """launch.py's run with these flags in this process (no interpreter start, no TensorFlow import): what
    `engine.run.run` returns. Flag errors raise instead of exiting 2."""
    import launch
    from engine.run import run

    launch.FLAGS(["launch.py", *flags])
    try:
        return run(launch.config_from_flags())
    finally:
        launch.FLAGS.unparse_flags()


def free_ports(count: int) -> list[int]:
    """`count` localhost ports free at the time of the call."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_data_service(workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A tf.data service as launch.py processes (a dispatcher and `workers` workers), each started once it says
    it is up: the dispatcher's grpc:// address and the processes (dispatcher first)."""
    port, *worker_ports = free_ports(1 + workers)
    processes = []
    for flags in [["--mode=data_dispatcher", f"--port={port}"]] + [
            ["--mode=data_worker", f"--dispatcher=localhost:{port}", f"--port={p}"] for p in worker_ports]:
        process = subprocess.Popen([sys.executable, os.path.join(REPO, "launch.py"), *flags], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not any(line.startswith("[data_service]") for line in process.stdout):
            raise AssertionError(f"{flags} did not start: exit {process.wait()}")
        processes.append(process)
    return f"grpc://localhost:{port}", processes
