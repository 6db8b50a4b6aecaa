"""multi_worker_mirrored with two local worker processes, TF_CONFIG on localhost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import tasks
from engine.config import Config
from tests.conftest import REPO, free_ports, start_data_service


def _trainable_weights(model_dir: str, weights_h5: str) -> list[np.ndarray]:
    """The trainable weights in a backup of the run in `model_dir`, loaded into the model its config.json makes."""
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    resolved = saved.pop("resolved")
    model = tasks.build(Config(**saved), resolved["class_names"]).build_model()
    model.load_weights(weights_h5)
    return [np.asarray(v) for v in model.trainable_weights]


def _start_workers(model_dir: str, dataset: str, *flags: str) -> list[subprocess.Popen]:
    """Two multi_worker_mirrored worker processes of one run, on fresh localhost ports."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "launch.py"), f"--dataset=shapes:{dataset}",
             "--strategy=multi_worker_mirrored", "--image_size=32", "--verbose=2",
             f"--model_dir={model_dir}", *flags],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


@pytest.mark.slow
def test_two_workers_train_one_model(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "mwms")
    processes = _start_workers(model_dir, tiny_shapes, "--epochs=2", "--batch_size=32")
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


def _metadata(model_dir: str, worker: int) -> dict:
    folder = os.path.join(model_dir, "backup") if worker == 0 else os.path.join(model_dir, "workers", "worker-1",
                                                                                   "backup")
    try:
        with open(os.path.join(folder, "training_metadata.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _when_past_epoch_one(model_dir: str, processes: list[subprocess.Popen]) -> None:
    """Waits until the chief has backed up a step inside epoch 2 (of 32 steps), or a worker ended."""
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in processes):
        at = _metadata(model_dir, 0)
        if at.get("epoch", 0) >= 1 and at.get("step", 0) > 0:
            return
        time.sleep(0.05)


FLAGS = ["--epochs=3", "--batch_size=8", "--checkpoint_steps=4", "--deterministic"]


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_both_resume(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "preempted")
    processes = _start_workers(model_dir, tiny_shapes, *FLAGS)
    _when_past_epoch_one(model_dir, processes)
    processes[1].send_signal(signal.SIGTERM)  # the scheduler preempts the non-chief worker only
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [143, 143], outputs[0][-2000:] + outputs[1][-2000:]
    stopped = [_metadata(model_dir, worker) for worker in (0, 1)]
    assert stopped[0]["epoch"] == stopped[1]["epoch"] == 1 and stopped[0]["step"] == stopped[1]["step"] > 0
    assert stopped[0]["iterations"] == stopped[1]["iterations"] == 32 + stopped[0]["step"]
    assert all(f"[preempted] SIGTERM: backed up at epoch 2 step {stopped[0]['step']}" in out for out in outputs)
    resumed = [p.communicate(timeout=600)[0] for p in _start_workers(model_dir, tiny_shapes, *FLAGS)]
    for output in resumed:
        assert f"[resume] epoch 2 step {stopped[0]['step']}" in output, output[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert json.load(f)["epochs"] == 3


@pytest.mark.slow
def test_both_workers_killed_resume_from_the_chiefs_backup_as_one_model(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "killed")
    processes = _start_workers(model_dir, tiny_shapes, *FLAGS)
    _when_past_epoch_one(model_dir, processes)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    at = _metadata(model_dir, 0)
    assert at.get("epoch") == 1, "both workers must be killed inside epoch 2 for this test to mean anything"
    # A kill between the two workers' writes of one step leaves the non-chief's backup behind the chief's; at
    # the extreme it has none: every worker restores the chief's
    shutil.rmtree(os.path.join(model_dir, "workers", "worker-1", "backup"))
    restarted = _start_workers(model_dir, tiny_shapes, *FLAGS)
    outputs = [p.communicate(timeout=600)[0] for p in restarted]
    assert [p.returncode for p in restarted] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    resumed = [line for line in outputs[0].splitlines() if line.startswith("[resume]")]
    assert resumed and all(resumed[0] in output for output in outputs), "both workers resume at the same step"
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert json.load(f)["epochs"] == 3
    chief = _trainable_weights(model_dir, os.path.join(model_dir, "backup", "latest.weights.h5"))
    other = _trainable_weights(model_dir, os.path.join(model_dir, "workers", "worker-1", "backup", "latest.weights.h5"))
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_workers_train_through_the_data_service_with_several_steps_per_execution(tiny_shapes, tmp_path):
    # both trainer workers read one tf.data service job; Keras' multi-step loop is replaced (keras_patches)
    address, servers = start_data_service(workers=2)
    model_dir = str(tmp_path / "served")
    processes = _start_workers(model_dir, tiny_shapes, "--epochs=2", "--batch_size=8", f"--data_service={address}",
                               "--steps_per_execution=4")
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for server in servers:
        server.kill()
        server.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert all("32/32" in output for output in outputs), "32 steps an epoch, in executions of 4"
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs"] == 2 and summary["replicas"] == 2 and np.isfinite(summary["loss"])
