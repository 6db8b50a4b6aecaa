"""Callbacks of the engine: per-epoch throughput and learning rate in the epoch logs.

Everything added to the epoch logs here reaches TensorBoard (as `epoch_<name>`), history.csv and
summary.json, because those callbacks run after this one and read the same logs.
"""

from __future__ import annotations

import time

import keras
import numpy as np


class ThroughputLogger(keras.callbacks.Callback):
    """Adds `images_per_second`, `step_seconds` and `learning_rate` to each epoch's logs."""

    def __init__(self, global_batch_size: int):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.epoch_rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last, self._steps = self._start, 0

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras reports the last step index of each execution.
        self._last, self._steps = time.perf_counter(), batch + 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._steps:
            return
        seconds = self._last - self._start
        rate = self._steps * self.global_batch_size / seconds
        self.epoch_rates.append(rate)
        logs["images_per_second"] = rate
        logs["step_seconds"] = seconds / self._steps
        logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))

    def steady_images_per_second(self) -> float | None:
        """Median epoch throughput, leaving out the first epoch (tracing and compilation) when possible."""
        rates = self.epoch_rates[1:] or self.epoch_rates
        return float(np.median(rates)) if rates else None


class MetricDetails(keras.callbacks.Callback):
    """Adds the `details()` of metrics that have them (per-class IoU, pixel accuracy) to each epoch's logs,
    as validation values ("val_" prefix) when the epoch was validated."""

    def __init__(self, metrics: list):
        super().__init__()
        self.metrics = [m for m in metrics if hasattr(m, "details")]

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        prefix = "val_" if "val_loss" in logs else ""
        for metric in self.metrics:
            logs.update({prefix + key: value for key, value in metric.details().items()})
