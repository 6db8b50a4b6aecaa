"""multi_worker_mirrored with two local worker processes, TF_CONFIG on localhost."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from engine import tasks
from engine.config import Config
from tests.conftest import REPO


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _trainable_weights(model_dir: str, weights_h5: str) -> list[np.ndarray]:
    """The trainable weights in a backup of the run in `model_dir`, loaded into the model its config.json makes."""
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    resolved = saved.pop("resolved")
    model = tasks.build(Config(**saved), resolved["class_names"]).build_model()
    model.load_weights(weights_h5)
    return [np.asarray(v) for v in model.trainable_weights]


@pytest.mark.slow
def test_two_workers_train_one_model(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "mwms")
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "launch.py"), f"--dataset=shapes:{tiny_shapes}",
             "--strategy=multi_worker_mirrored", "--epochs=2", "--batch_size=32", "--image_size=32",
             "--verbose=2", f"--model_dir={model_dir}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "strategy multi_worker_mirrored x2 on CPU" in outputs[0]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["replicas"] == 2 and summary["epochs"] == 2
    assert not os.path.exists(os.path.join(model_dir, "workers", "worker-0")), "worker 0 is the chief"
    # One model: after synchronous steps the two workers' trainable weights are the same numbers (not the
    # BatchNormalization moving statistics: each worker keeps those of its own batches)
    chief = _trainable_weights(model_dir, os.path.join(model_dir, "backup", "latest.weights.h5"))
    other = _trainable_weights(model_dir, os.path.join(model_dir, "workers", "worker-1", "backup", "latest.weights.h5"))
    assert len(chief) == len(other) > 10
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
