"""multi_worker_mirrored with two local worker processes, TF_CONFIG on localhost."""

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(model_dir, "workers", "worker-1", "backup", "latest.weights.h5"))
    assert not os.path.exists(os.path.join(model_dir, "workers", "worker-0")), "worker 0 is the chief"
