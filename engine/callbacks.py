"""Callbacks of the engine: per-epoch throughput, input wait and learning rate in the epoch logs.

Everything added to the epoch logs here reaches TensorBoard (as `epoch_<name>`), history.csv and
summary.json, because those callbacks run after this one and read the same logs.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from engine import files, optim, recovery


class InputClock:
    """When each training batch was done (the pipeline calls `note` per batch, `datasets/pipeline.py`
    on_ready), so that a step that started before its batches were done is known to have waited for them."""

    def __init__(self):
        self.ready: collections.deque[float] = collections.deque()

    def note(self) -> None:
        """Records that the next batch in stream order is done."""
        self.ready.append(time.time())

    def waited(self, batches: int, step_started: float) -> float:
        """Seconds a step that began at `step_started` (time.time()) and consumed the next `batches` batches
        spent waiting for them: from its start until the last of them was done, if that came later."""
        done = [self.ready.popleft() for _ in range(min(batches, len(self.ready)))]
        return max(0.0, max(done, default=step_started) - step_started)


class ThroughputLogger(keras.callbacks.Callback):
    """Adds `images_per_second`, `step_seconds`, `learning_rate` and, given the input pipeline's `clock`,
    `input_wait_seconds` (per step) and `input_wait_fraction` (of the epoch's step time) to each epoch's
    logs. `batches_per_step`: pipeline batches one step call consumes (local replicas x steps per
    execution)."""

    def __init__(self, global_batch_size: int, clock: InputClock | None = None, batches_per_step: int = 1):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.clock = clock
        self.batches_per_step = batches_per_step
        self.epoch_rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last, self._steps, self._waited = self._start, 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._step_started = time.time()

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras reports the last step index of each execution.
        self._last, self._steps = time.perf_counter(), batch + 1
        if self.clock is not None:
            self._waited += self.clock.waited(self.batches_per_step, self._step_started)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._steps:
            return
        seconds = self._last - self._start
        rate = self._steps * self.global_batch_size / seconds
        self.epoch_rates.append(rate)
        logs["images_per_second"] = rate
        logs["step_seconds"] = seconds / self._steps
        if self.clock is not None:
            logs["input_wait_seconds"] = self._waited / self._steps
            logs["input_wait_fraction"] = self._waited / seconds
        logs["learning_rate"] = optim.learning_rate_of(self.model.optimizer)

    def steady_images_per_second(self) -> float | None:
        """Median epoch throughput, leaving out the first epoch (tracing and compilation) when possible."""
        rates = self.epoch_rates[1:] or self.epoch_rates
        return float(np.median(rates)) if rates else None


def metric_details(model: keras.Model) -> dict[str, float]:
    """The `details()` (per-class IoU, pixel accuracy, ...) of the metrics compiled into `model` that have them.
    Keras keeps the compiled metrics inside one CompileMetrics, whose `metrics` lists them."""
    found = {}
    for metric in model.metrics:
        for inner in getattr(metric, "metrics", [metric]):
            if hasattr(inner, "details"):
                found.update(inner.details())
    return found


class MetricDetails(keras.callbacks.Callback):
    """Adds `metric_details` to each epoch's logs, as validation values ("val_" prefix) when the epoch was
    validated (the metrics then hold the validation pass)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        prefix = "val_" if "val_loss" in logs else ""
        logs.update({prefix + key: value for key, value in metric_details(self.model).items()})


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras' SwapEMAWeights(swap_on_epoch=True): after each epoch the model holds the averaged weights (for
    validation, evaluators and checkpoints; the epoch-end backup saves the raw ones inside `raw_weights`), and
    the raw ones again when the next epoch trains. Keras would also make the averages the raw weights after the
    fit's last epoch, before the backup; `at_fit_end()`, placed after the backup, does that instead, after the
    last epoch or a stop, and only if the fit `ends_training` (not one that finishes an interrupted epoch)."""

    def __init__(self, ends_training: bool = True):
        super().__init__(swap_on_epoch=True)
        self.ends_training = ends_training

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def at_fit_end(self) -> keras.callbacks.Callback:
        """The callback that leaves only the averages in the model (what `fit` then keeps) after the fit's last
        epoch if the fit ends training, and after an early stop."""
        def finalize(epoch, logs=None):
            last = self.ends_training and epoch == self.params["epochs"] - 1
            if (last or self.model.stop_training) and self._ema_weights_in_model:
                self._finalize_ema_values()
        return keras.callbacks.LambdaCallback(on_epoch_end=finalize)

    @contextlib.contextmanager
    def raw_weights(self) -> Iterator[None]:
        """Inside the block the model holds its raw weights, also where the averages are swapped in."""
        swapped = self._ema_weights_in_model
        if swapped:
            self._swap_variables()
        try:
            yield
        finally:
            if swapped:
                self._swap_variables()


class CSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger, also on gs:// and ram://: its on_train_end reads `closed`, which tf.io.gfile's files
    (what Keras opens for remote paths) do not have."""

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file, self.writer = None, None


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint writing each save to a partial file and renaming it into place, so a run killed
    while best.keras is written keeps the previous best.keras whole (a kill mid-write once left a truncated one)."""

    def _get_file_path(self, epoch, batch, logs):
        return files.partial_path(super()._get_file_path(epoch, batch, logs))

    def _save_model(self, epoch, batch, logs):
        if not recovery.all_finite(self.model):
            print(f"[checkpoint] epoch {epoch + 1}: weights not finite, {self.filepath} not written", flush=True)
            return
        partial = files.partial_path(self.filepath)
        if tf.io.gfile.exists(partial):  # a run killed mid-write left it: never renamed into place
            tf.io.gfile.remove(partial)
        super()._save_model(epoch, batch, logs)
        if tf.io.gfile.exists(partial):  # written now (the epoch was a new best)
            tf.io.gfile.rename(partial, self.filepath, overwrite=True)
