"""Surviving kills, preemption and non-finite losses: step backups, SIGTERM and the NaN guard.

A backup (`StepBackup`) is the model's and the optimizer's weights in `latest.weights.h5` and the position in
`training_metadata.json` (Keras' BackupAndRestore names, which `completed_epochs` and --init_checkpoint read),
with whether early stopping ended the fit there, written at every epoch end and, with --checkpoint_steps=N,
every N steps. Each file is written beside its place and renamed into it, so a kill mid-write keeps the previous
one. The epoch-end backup is written last of the epoch's files (after best.keras, the history row and
TensorBoard's), so a run resumed from it has them all. Where a resumed run stands is read from the optimizer's own
step counter inside the weights file (`position`), so the weights and the position can never disagree, whatever
instant the kill came.

A resumed run continues the learning-rate schedule (it is a function of that counter) and the data stream:
`fit.train` skips the examples the backed-up steps consumed before anything is decoded
(`PipelineConfig.skip_steps`), and runs the rest of the interrupted epoch before the following ones. What a kill
loses is the steps since the last backup: they are trained again on the same examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
from typing import Callable, ContextManager

import keras
import tensorflow as tf

from engine import files

WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"


class Preempted(Exception):
    """The run was asked to stop (SIGTERM) and backed up at the step it reached."""


class NonFiniteLoss(Exception):
    """The loss stayed non-finite after --nan_retries roll-backs; the last good backup is kept."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a phase's training stands: `steps` done since the phase began, as `epoch` and `step` within it."""

    steps: int
    epoch: int
    step: int


def has_backup(backup_dir: str) -> bool:
    """Whether `backup_dir` holds a backup to resume from."""
    return tf.io.gfile.exists(os.path.join(backup_dir, WEIGHTS))


def early_stop_epoch(backup_dir: str) -> int | None:
    """The epochs done when early stopping ended the fit that `backup_dir` backed up, or None if it did not."""
    if not tf.io.gfile.exists(os.path.join(backup_dir, METADATA)):
        return None
    saved = files.read_json(os.path.join(backup_dir, METADATA))
    return saved["epoch"] if saved.get("stopped_early") else None


def _random_states(model: keras.Model) -> dict[str, list[int]]:
    """The states of the model's random generators (Dropout's SeedGenerator): variables, but not weights, so
    the weights file leaves them out."""
    weights = {id(weight) for weight in model.weights}
    return {v.path: v.numpy().tolist() for v in model.variables if id(v) not in weights and "seed" in v.path}


def restore(model: keras.Model, backup_dir: str) -> None:
    """Loads the backup's model and optimizer weights into `model` (compiled, its optimizer built here), under
    the model's distribution strategy, and its random generators' states when the metadata is of the same step
    (so that dropout draws the masks an uninterrupted run would)."""
    with model.distribute_strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(backup_dir, WEIGHTS))
        saved = files.read_json(os.path.join(backup_dir, METADATA))
        if saved.get("iterations") == int(model.optimizer.iterations.numpy()):
            for variable in model.variables:
                if variable.path in saved.get("random_states", {}):
                    variable.assign(saved["random_states"][variable.path])


def position(model: keras.Model, first_epoch: int, steps_per_epoch: int, accumulation: int) -> Position:
    """The position of `model`'s optimizer in a phase that began at `first_epoch`: each of its updates took
    `accumulation` steps."""
    steps = int(model.optimizer.iterations.numpy()) * accumulation
    return Position(steps, first_epoch + steps // steps_per_epoch, steps % steps_per_epoch)


class StepBackup(keras.callbacks.Callback):
    """Backs up the model and its optimizer every `every_steps` steps (0: only at epoch ends), when training
    begins without a backup (so that a roll-back always has one) and when asked (`save_now`); the epoch-end
    backup is `at_epoch_end()`'s. The fit begins at `first_epoch`, `first_step` steps into it (a resumed epoch).
    `raw_weights`: a context in which the model holds its raw weights (--ema_decay swaps the averages in at
    epoch ends); backups hold the raw ones, which training goes on from."""

    def __init__(self, backup_dir: str, every_steps: int, first_epoch: int, first_step: int = 0,
                 raw_weights: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.backup_dir, self.every_steps, self.raw_weights = backup_dir, every_steps, raw_weights
        self._epoch, self._step, self._offset = first_epoch, first_step, first_step
        self._saved = first_step  # the step of the last backup in this epoch

    def on_train_begin(self, logs=None):
        if not has_backup(self.backup_dir):
            self.save_now()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # Keras numbers each fit's batches from 0, and reports the last of each --steps_per_execution group
        self._step = self._offset + batch + 1
        if self.every_steps and self._step - self._saved >= self.every_steps:
            self.save_now()

    def at_epoch_end(self) -> keras.callbacks.Callback:
        """The callback that backs up at each epoch end. Place it after every callback that writes the epoch's
        files (best.keras, the history row, TensorBoard): a kill before it resumes the epoch from the previous
        backup and writes them again, a kill after it finds them written."""
        def back_up(epoch, logs=None):
            self._epoch, self._step, self._offset = epoch + 1, 0, 0
            with self.raw_weights():
                self.save_now(stopped_early=self.model.stop_training)  # set by EarlyStopping, placed before
        return keras.callbacks.LambdaCallback(on_epoch_end=back_up)

    def where(self) -> str:
        """The current position, for messages."""
        return f"epoch {self._epoch + 1} step {self._step}"

    def where_batch(self, batch: int) -> str:
        """The position at the end of this fit's batch `batch`, for messages (before `on_train_batch_end`)."""
        return f"epoch {self._epoch + 1} step {self._offset + batch + 1}"

    def save_now(self, stopped_early: bool = False) -> None:
        """Writes the backup at the current step; `stopped_early`: early stopping ended the fit here, so a run
        started again from it trains no further in this phase."""
        tf.io.gfile.makedirs(self.backup_dir)
        files.write_atomically(os.path.join(self.backup_dir, WEIGHTS), self.model.save_weights)
        files.write_json(os.path.join(self.backup_dir, METADATA),
                         {"epoch": self._epoch, "step": self._step,
                          "iterations": int(self.model.optimizer.iterations.numpy()),
                          "random_states": _random_states(self.model), "stopped_early": stopped_early})
        self._saved = self._step


class TerminationHandler(keras.callbacks.Callback):
    """SIGTERM (what cloud schedulers send before preempting) makes the run back up at the step it is in and
    raise `Preempted`; launch.py then exits with a line saying where and how to resume. Under multi-worker, a
    signal to any worker stops all of them at the same step: every step the workers all-reduce whether one was
    signalled."""

    def __init__(self, backup: StepBackup):
        super().__init__()
        self.backup = backup
        self.requested = False
        self._previous = None

    def on_train_begin(self, logs=None):
        self._previous = signal.signal(signal.SIGTERM, self._request)
        strategy = self.model.distribute_strategy
        self._workers_signalled = tf.function(  # a tf.function: collectives run eagerly cost far more
            lambda flag: strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None))

    def _request(self, signum, frame) -> None:
        self.requested = True

    def _any_worker_requested(self) -> bool:
        if not isinstance(self.model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return self.requested
        return float(self._workers_signalled(tf.constant(float(self.requested)))) > 0

    def on_train_batch_end(self, batch, logs=None):
        if self._any_worker_requested():
            self.backup.save_now()
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            raise Preempted(f"SIGTERM: backed up at {self.backup.where()} to {self.backup.backup_dir}; "
                            "run the same command again to resume there")

    def on_train_end(self, logs=None):
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


class NonFiniteGuard(keras.callbacks.Callback):
    """A non-finite training loss rolls the model and optimizer back to the last backup and training goes on
    with the next batches, up to `retries` times in a run; then `NonFiniteLoss`, the backup left as it was.
    Place it before the `StepBackup`, so that no non-finite state is ever backed up at a step."""

    def __init__(self, backup: StepBackup, retries: int):
        super().__init__()
        self.backup, self.retries = backup, retries
        self.rolled_back = 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        at = self.backup.where_batch(batch)
        if self.rolled_back >= self.retries:
            raise NonFiniteLoss(
                f"loss {float(loss)} at {at} after {self.rolled_back} roll-back(s) (--nan_retries={self.retries}); "
                f"the last good backup is kept in {self.backup.backup_dir}. Try a lower --learning_rate, "
                "--precision=float32, a longer --warmup_epochs, or check the data (--mode=inspect)")
        self.rolled_back += 1
        restore(self.model, self.backup.backup_dir)
        for metric in self.model.metrics:  # the epoch's running means held the non-finite loss
            metric.reset_state()
        print(f"\n[nan] loss {float(loss)} at {at}: rolled back to the last backup (optimizer step "
              f"{int(self.model.optimizer.iterations.numpy())}), roll-back {self.rolled_back} of "
              f"{self.retries}; training goes on with the next batches", flush=True)


class PlantedNaN(keras.callbacks.Callback):
    """Test hook (--debug_nan_steps): makes the first trainable weight NaN before each of the given optimizer
    steps, once each, so that the loss of that step is non-finite."""

    def __init__(self, steps: list[int]):
        super().__init__()
        self.pending = set(steps)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step in self.pending:
            self.pending.discard(step)
            weight = self.model.trainable_variables[0]
            weight.assign(tf.fill(weight.shape, float("nan")))


def all_finite(model: keras.Model) -> bool:
    """Whether every weight of `model` is finite (a model that is not is never saved as best or final)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(w, tf.float32)))) for w in model.weights
               if "float" in str(w.dtype))
