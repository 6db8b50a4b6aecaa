"""Training: the model built and compiled under the strategy, the callbacks, `Model.fit`, and summary.json.

One path for every task, strategy, precision and XLA setting. A restart with the same run directory resumes
from Keras' BackupAndRestore state and keeps the best checkpoint and history of the earlier run.
"""

from __future__ import annotations

import csv
import json
import os
import time

import keras

from engine import callbacks as engine_callbacks
from engine import devices, evaluate, optim
from engine.config import FlagError, profile_batches
from engine.data_tools import preview
from engine.job import Job


def build_model(job: Job) -> keras.Model:
    """The task's model, compiled under the strategy with the optimizer, schedule and numerics of `job`."""
    config, steps = job.config, job.steps
    with job.strategy.scope():
        try:
            model = job.task.build_model()
        except ValueError as error:  # a model name or size the task's builders refuse, named in the message
            raise FlagError(str(error)) from error
        schedule = optim.learning_rate_schedule(config.learning_rate, config.lr_schedule,
                                                round(config.warmup_epochs * steps.steps_per_epoch), steps.total_steps)
        model.compile(optimizer=optim.build_optimizer(config.optimizer, schedule, config.weight_decay,
                                                      config.momentum),
                      **job.task.compile_args(), jit_compile=job.numerics.jit_compile,
                      steps_per_execution=config.steps_per_execution)
    return model


def throughput_logger(job: Job, input_wait: bool = True) -> engine_callbacks.ThroughputLogger:
    """Images/s, step time and, if `input_wait` (but on TPU, whose input pipelines may not run Python), input
    wait per epoch: pass its `clock.note` to the training input as on_ready."""
    clock = None if job.config.strategy == "tpu" or not input_wait else engine_callbacks.InputClock()
    batches_per_step = devices.local_replicas(job.strategy) * job.config.steps_per_execution
    return engine_callbacks.ThroughputLogger(job.config.batch_size, clock, batches_per_step)


def _best_so_far(history_csv: str, metric: str) -> float | None:
    """The best (highest) value of `metric` in an earlier run's history, so a restart keeps the best model."""
    if not os.path.exists(history_csv):
        return None
    with open(history_csv) as f:
        values = [float(row[metric]) for row in csv.DictReader(f) if row.get(metric) not in (None, "")]
    return max(values) if values else None


def _last_row(history_csv: str) -> dict:
    if not os.path.exists(history_csv):
        return {}
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    # Keras' CSVLogger writes "NA" in the val_ columns it adds when there is no validation (--mode=train).
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", "NA") and k != "epoch"} if rows else {}


def _callbacks(job: Job, throughput: engine_callbacks.ThroughputLogger, validate: bool
               ) -> list[keras.callbacks.Callback]:
    model_dir = job.model_dir
    # Non-chief workers keep their own backup (every worker must restore) and write nothing else.
    backup_dir = os.path.join(model_dir, "backup") if job.is_chief else os.path.join(
        model_dir, "workers", f"worker-{job.worker}", "backup")
    result = [
        throughput,  # first: adds throughput and learning rate to the logs the callbacks below read
        engine_callbacks.MetricDetails(),  # per-class values of metrics that have them
        *(evaluate.evaluators(job) if validate else []),  # metrics computed outside the graph (detection mAP)
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", double_checkpoint=True,
                                         delete_checkpoint=False),
    ]
    if not job.is_chief:
        return result
    history_csv = os.path.join(model_dir, "history.csv")
    monitor = job.task.best_metric if validate else "loss"
    result += [
        keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "best.keras"), monitor=monitor,
                                        mode="max" if validate else "min", save_best_only=True,
                                        initial_value_threshold=_best_so_far(history_csv, monitor)
                                        if validate else None),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard"), write_graph=False,
                                    update_freq="epoch", profile_batch=profile_batches(job.config.profile_steps)),
    ]
    return result


def train(job: Job, model: keras.Model, started: float) -> dict:
    """Fits `model` (resuming from the run directory's backup), validating every epoch in train_and_eval and
    stopping early after --patience epochs without a new best, and writes the overlays, final.keras and
    summary.json; returns the summary."""
    config = job.config
    if job.is_chief and config.preview_batches > 0:
        preview(job)
    throughput = throughput_logger(job)
    validate = config.mode == "train_and_eval"
    callbacks = _callbacks(job, throughput, validate)
    stopper = keras.callbacks.EarlyStopping(job.task.best_metric, patience=config.patience, mode="max", verbose=1)
    if validate and config.patience:  # every worker sees the same all-reduced logs, so all stop together
        callbacks.append(stopper)
    with evaluate.quiet_end_of_evaluation():
        model.fit(
            job.dataset(training=True, on_ready=throughput.clock.note if throughput.clock else None),
            epochs=job.steps.epochs, steps_per_epoch=job.steps.steps_per_epoch,
            # No validation_steps: the evaluation dataset ends after one pass (see pipeline.batches).
            validation_data=job.dataset(training=False) if validate else None,
            callbacks=callbacks,
            verbose=config.verbose, shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
        )
    history_csv = os.path.join(job.model_dir, "history.csv")
    last_row = _last_row(history_csv)
    resolved = job.resolved()
    summary = {
        **last_row, **job.task.summary(last_row),
        "best_metric": job.task.best_metric if validate else "loss",
        "best_value": _best_so_far(history_csv, job.task.best_metric) if validate else None,
        "epochs": job.steps.epochs, "wall_time_seconds": time.perf_counter() - started,
        "stopped_early": (f"after epoch {stopper.stopped_epoch + 1}: no new best {job.task.best_metric} in "
                          f"{config.patience} epochs" if stopper.stopped_epoch else None),
        "images_per_second": throughput.steady_images_per_second(),
        **{k: resolved[k] for k in ("strategy", "replicas", "precision", "jit_compile", "device_kind", "num_train",
                                    "num_val")},
    }
    if job.is_chief:
        if validate:
            evaluate.write_overlays(job, model)
        model.save(os.path.join(job.model_dir, "final.keras"))
        with open(os.path.join(job.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
