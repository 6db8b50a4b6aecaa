"""Surviving kills, SIGTERM and non-finite losses (engine/recovery.py), end to end through launch.py."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from tests.conftest import REPO, run_launch

# 256 training images in batches of 8: 32 steps an epoch; one device, so steps repeat exactly
LONG_EPOCHS = ["--image_size=32", "--batch_size=8", "--epochs=2", "--verbose=2", "--learning_rate=1e-3",
               "--strategy=one_device", "--deterministic", "--preview_batches=0"]


def _args(tiny_shapes, model_dir, *flags):
    return [f"--dataset=shapes:{tiny_shapes}", f"--model_dir={model_dir}", *LONG_EPOCHS, *flags]


def _metadata(model_dir):
    try:
        with open(os.path.join(model_dir, "backup", "training_metadata.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _start(args):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_step(process, model_dir, step, deadline=300):
    """Waits until the run's backup is at least `step` steps into its first epoch."""
    end = time.time() + deadline
    while time.time() < end and process.poll() is None:
        found = _metadata(model_dir)
        if found and (found["epoch"] > 0 or found["step"] >= step):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step}: {process.poll()}")


def _learning_rates(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return [float(row["learning_rate"]) for row in csv.DictReader(f)]


def _final_weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "final.keras"), compile=False).get_weights()


def _finite_h5(path):
    values = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: values.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return all(np.all(np.isfinite(v)) for v in values if np.issubdtype(np.asarray(v).dtype, np.floating))


@pytest.mark.slow
@pytest.mark.parametrize("ema", ["--ema_decay=0", "--ema_decay=0.9"])
def test_kill_mid_epoch_resumes_at_the_backed_up_step_as_if_never_killed(tiny_shapes, tmp_path, ema):
    # With --ema_decay, the rest of the interrupted epoch must hand the raw weights, not the averages, to the
    # next epoch (Keras' fit ends by copying the averages into the model; it once did here).
    reference = str(tmp_path / "uninterrupted")
    result = run_launch(*_args(tiny_shapes, reference, "--checkpoint_steps=5", ema))
    assert result.returncode == 0, result.stderr[-3000:]

    killed = str(tmp_path / "killed")
    process = _start(_args(tiny_shapes, killed, "--checkpoint_steps=5", ema))
    _wait_for_step(process, killed, random.Random().randint(5, 25))
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _metadata(killed)
    assert saved["epoch"] == 0 and 5 <= saved["step"] < 32 and saved["step"] % 5 == 0, saved

    resumed = run_launch(*_args(tiny_shapes, killed, "--checkpoint_steps=5", ema))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"[resume] epoch 1 step {saved['step']} ({saved['step']} steps of this phase done" in resumed.stdout
    # The schedule goes on from the optimizer's step and the data stream from the example it had reached:
    # the steps after the backup are trained again on the same batches, so the run ends where an
    # uninterrupted one does.
    assert _learning_rates(killed) == pytest.approx(_learning_rates(reference), rel=1e-6)
    for ours, theirs in zip(_final_weights(killed), _final_weights(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigterm_backs_up_at_the_step_and_exits_then_the_restart_resumes_there(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "preempted")
    args = _args(tiny_shapes, model_dir, "--checkpoint_steps=7")
    process = _start(args)
    _wait_for_step(process, model_dir, 7)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    saved = _metadata(model_dir)
    line = f"[preempted] SIGTERM: backed up at epoch {saved['epoch'] + 1} step {saved['step']} to"
    assert line in stderr and "run the same command again to resume there" in stderr
    assert "Traceback" not in stderr
    assert saved["step"] >= 7 or saved["epoch"] > 0

    resumed = run_launch(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if saved["step"]:
        assert f"[resume] epoch {saved['epoch'] + 1} step {saved['step']} " in resumed.stdout
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert json.load(f)["epochs"] == 2
    assert len(_learning_rates(model_dir)) == 2


@pytest.mark.slow
def test_a_nan_is_rolled_back_and_training_finishes_finite(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "nan")
    result = run_launch(*_args(tiny_shapes, model_dir, "--checkpoint_steps=4", "--debug_nan_steps=6"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[nan] loss nan at epoch 1 step 7: rolled back to the last backup (optimizer step 4), roll-back 1 of 3" \
        in result.stdout
    assert all(np.all(np.isfinite(w)) for w in _final_weights(model_dir))
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert np.isfinite(json.load(f)["val_accuracy"])


@pytest.mark.slow
def test_nans_past_the_retries_stop_the_run_and_keep_the_last_good_backup(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "nan_stop")
    result = run_launch(*_args(tiny_shapes, model_dir, "--checkpoint_steps=4", "--debug_nan_steps=6",
                               "--nan_retries=0"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "error: loss nan at epoch 1 step 7 after 0 roll-back(s) (--nan_retries=0)" in result.stderr
    assert "--learning_rate" in result.stderr and "Traceback" not in result.stderr
    assert _metadata(model_dir)["step"] == 4
    assert _finite_h5(os.path.join(model_dir, "backup", "latest.weights.h5"))
    assert not os.path.exists(os.path.join(model_dir, "final.keras"))
    assert not os.path.exists(os.path.join(model_dir, "best.keras"))


def test_recovery_flags_are_checked(tiny_shapes):
    for flag, message in (("--checkpoint_steps=-1", "--checkpoint_steps=-1 must be 0"),
                          ("--nan_retries=-2", "--nan_retries=-2 must be at least 0")):
        result = run_launch(f"--dataset=shapes:{tiny_shapes}", "--epochs=1", flag)
        assert result.returncode == 2 and message in result.stderr


def test_a_partial_checkpoint_left_by_a_kill_never_replaces_best(tmp_path):
    """A kill during a best.keras write leaves partial-best.keras; a later epoch that is not a new best must not
    rename that truncated file into place (it once did: the resumed run then failed to load best.keras)."""
    from engine.callbacks import AtomicModelCheckpoint
    from engine.files import partial_path

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    best = str(tmp_path / "best.keras")
    checkpoint = AtomicModelCheckpoint(best, monitor="val_loss", mode="min", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    with open(partial_path(best), "wb") as f:
        f.write(b"PK\x03\x04 cut short")
    checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # not a new best: nothing is written
    keras.models.load_model(best)
    assert not os.path.exists(partial_path(best))


@pytest.mark.slow
def test_the_epoch_end_backup_is_written_after_the_epochs_checkpoint_history_and_events(tiny_shapes, tmp_path,
                                                                                        monkeypatch):
    """A run killed right after an epoch-end backup resumes at the next epoch, so that epoch's best.keras,
    history row and TensorBoard events must already be written (they were once written after the backup, and
    such a run lacked them); and the backup holds the raw weights that training goes on from, not
    --ema_decay's averages."""
    from tensorboard.backend.event_processing import event_accumulator

    from engine import fit, job as job_module, recovery
    from engine.config import Config

    model_dir = tmp_path / "run"
    at_epoch_ends, trained = [], {}
    save_now, batch_end = recovery.StepBackup.save_now, recovery.StepBackup.on_train_batch_end

    def watched_batch_end(backup, batch, logs=None):  # the weights each training step leaves
        trained["weights"] = [weight.numpy() for weight in backup.model.trainable_variables]
        batch_end(backup, batch, logs)

    def watched_save_now(backup, **kwargs):
        save_now(backup, **kwargs)
        if backup._step == 0 and backup._epoch > 0:  # an epoch-end backup (not the one before the first step)
            # (Keras swaps the averages in and out by adding and subtracting, so to float rounding)
            raw = all(np.allclose(weight.numpy(), last, rtol=1e-5, atol=1e-6)
                      for weight, last in zip(backup.model.trainable_variables, trained["weights"]))
            optimizer = backup.model.optimizer
            averaged = any(not np.allclose(weight.numpy(), average.numpy(), rtol=1e-5, atol=1e-6) for weight, average
                           in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))
            rows = len(_learning_rates(model_dir)) if os.path.exists(model_dir / "history.csv") else 0
            events = event_accumulator.EventAccumulator(str(model_dir / "tensorboard" / "train"),
                                                        size_guidance={event_accumulator.TENSORS: 0}).Reload()
            logged = min((len(events.Tensors(tag)) for tag in events.Tags()["tensors"]), default=0)  # every tag's
            at_epoch_ends.append((backup._epoch, rows, logged, os.path.exists(model_dir / "best.keras"), raw,
                                  averaged))

    monkeypatch.setattr(recovery.StepBackup, "on_train_batch_end", watched_batch_end)
    monkeypatch.setattr(recovery.StepBackup, "save_now", watched_save_now)
    job = job_module.prepare(Config(dataset=f"shapes:{tiny_shapes}", model_dir=str(model_dir), image_size=32,
                                    batch_size=32, epochs=3, ema_decay=0.9, strategy="one_device",
                                    preview_batches=0))
    fit.train(job, fit.build_model(job), time.perf_counter())
    # Each epoch's history row and TensorBoard events written (flushed), best.keras too, and the weights of its
    # last step backed up, not the averages (also the last epoch's, before Keras' fit keeps only the averages)
    assert at_epoch_ends == [(epoch, epoch, epoch, True, True, True) for epoch in (1, 2, 3)]
