"""Training: the model built and compiled under the strategy, the callbacks, `Model.fit`, and summary.json.

One path for every task, strategy, precision and XLA setting. A restart with the same run directory resumes
from its backup (engine/recovery.py: at the step, the data stream where it was) and keeps the best
checkpoint and history of the earlier run.
"""

from __future__ import annotations

import contextlib
import os
import time

import keras
import tensorflow as tf

from engine import callbacks as engine_callbacks
from engine import devices, evaluate, files, finetune, optim, recovery, report
from engine.config import FlagError, profile_batches
from engine.data_tools import preview
from engine.job import Job
from engine.reports import curves


def build_model(job: Job) -> keras.Model:
    """The task's model, built under the strategy and compiled for the run's last phase."""
    with job.strategy.scope():
        try:
            model = job.task.build_model()
        except ValueError as error:  # a model name or size the task's builders refuse, named in the message
            raise FlagError(str(error)) from error
    compile_phase(job, model, job.phases[-1])
    return model


def compile_phase(job: Job, model: keras.Model, phase: finetune.Phase) -> int:
    """Sets what `phase` trains and compiles `model` under the strategy with the optimizer, the learning-rate
    schedule (one schedule across the phases, counted in optimizer updates) and the numerics of `job`; with
    --backbone_lr_scale, the trainable backbone gets its own optimizer at the scaled rate. Returns the number
    of trainable weight tensors."""
    config, steps, accumulation = job.config, job.steps, job.config.grad_accum_steps
    schedule = optim.learning_rate_schedule(config.learning_rate, config.lr_schedule,
                                            round(config.warmup_epochs * steps.steps_per_epoch / accumulation),
                                            steps.total_steps // accumulation)
    offset = phase.first_epoch * steps.steps_per_epoch // accumulation  # updates before this phase

    def optimizer(label: str, scale: float = 1.0) -> keras.optimizers.Optimizer:
        return optim.build_optimizer(config.optimizer, optim.per_update(schedule, accumulation, offset, scale),
                                     config.weight_decay, config.momentum, config.ema_decay, accumulation, label)

    finetune.set_trainable(model, job.task, phase)
    with job.strategy.scope():
        chosen = optimizer(optim.HEAD)
        if config.init_checkpoint and config.backbone_lr_scale != 1 and not phase.frozen_backbone:
            chosen = optim.split_optimizer(chosen, optimizer(optim.BACKBONE, config.backbone_lr_scale),
                                           finetune.backbone_variable_paths(model, job.task))
        model.compile(optimizer=chosen, **job.task.compile_args(), jit_compile=job.numerics.jit_compile,
                      steps_per_execution=config.steps_per_execution)
    return len(model.trainable_weights)


def throughput_logger(job: Job, input_wait: bool = True) -> engine_callbacks.ThroughputLogger:
    """Images/s, step time and, if `input_wait` (but on TPU, whose input pipelines may not run Python), input
    wait per epoch: pass its `clock.note` to the training input as on_ready."""
    clock = None if job.config.strategy == "tpu" or not input_wait else engine_callbacks.InputClock()
    batches_per_step = devices.local_replicas(job.strategy) * job.config.steps_per_execution
    return engine_callbacks.ThroughputLogger(job.config.batch_size, clock, batches_per_step)


def _best_so_far(history_csv: str, metric: str) -> float | None:
    """The best (highest) value of `metric` in an earlier run's history, so a restart keeps the best model."""
    values = [float(row[metric]) for row in curves.history_rows(history_csv) if row.get(metric) not in (None, "")]
    return max(values) if values else None


def _last_row(history_csv: str) -> dict:
    rows = curves.history_rows(history_csv)
    # Keras' CSVLogger writes "NA" in the val_ columns it adds when there is no validation (--mode=train).
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", "NA") and k != "epoch"} if rows else {}


def _backup_root(job: Job, chief: bool = False) -> str:
    """Where this worker writes its backups (non-chief workers keep their own and write nothing else), or with
    `chief` the chief's, which every worker restores: one backup, so all resume at the same step."""
    return os.path.join(job.model_dir, "backup") if job.is_chief or chief else os.path.join(
        job.model_dir, "workers", f"worker-{job.worker}", "backup")


def _callbacks(job: Job, throughput: engine_callbacks.ThroughputLogger, validate: bool, backup_dir: str,
               stopper: keras.callbacks.EarlyStopping | None, first_epoch: int, first_step: int, ends_phase: bool
               ) -> list[keras.callbacks.Callback]:
    """In order: throughput first (it adds to the logs the others read); the NaN guard before the step backups (no
    non-finite state is backed up), SIGTERM after them; --ema_decay's averages swapped in for the evaluators,
    early stopping and the chief's checkpoint, history row and TensorBoard; then the epoch-end backup (of the
    raw weights), so that a run resumed from it has that epoch's files; last, after a fit's last epoch, only
    the averages kept if the fit `ends_phase` (not if it only trains the rest of an interrupted epoch)."""
    config = job.config
    ema = engine_callbacks.EMAWeights(ends_training=ends_phase) if config.ema_decay else None
    backup = recovery.StepBackup(backup_dir, config.checkpoint_steps, first_epoch, first_step,
                                 raw_weights=ema.raw_weights if ema else contextlib.nullcontext)
    result = [
        throughput,
        engine_callbacks.MetricDetails(),  # per-class values of metrics that have them
        *([recovery.PlantedNaN([int(step) for step in config.debug_nan_steps])] if config.debug_nan_steps else []),
        recovery.NonFiniteGuard(backup, config.nan_retries),
        backup,
        recovery.TerminationHandler(backup),
        *([ema] if ema else []),
        *(evaluate.evaluators(job) if validate else []),  # metrics computed outside the graph (detection mAP)
        *([stopper] if stopper else []),  # every worker sees the same all-reduced logs, so all stop together
    ]
    if job.is_chief:
        history_csv = os.path.join(job.model_dir, "history.csv")
        monitor = job.task.best_metric if validate else "loss"
        result += [
            engine_callbacks.AtomicModelCheckpoint(os.path.join(job.model_dir, "best.keras"), monitor=monitor,
                                                   mode="max" if validate else "min", save_best_only=True,
                                                   initial_value_threshold=_best_so_far(history_csv, monitor)
                                                   if validate else None),
            engine_callbacks.CSVLogger(history_csv, append=True),
            keras.callbacks.TensorBoard(os.path.join(job.model_dir, "tensorboard"), write_graph=False,
                                        update_freq="epoch", profile_batch=profile_batches(job.config.profile_steps)),
        ]
    return result + [backup.at_epoch_end(), *([ema.at_fit_end()] if ema else [])]


def _spans(job: Job, model: keras.Model, phase: finetune.Phase, backup_dir: str) -> list[tuple[int, int, int]]:
    """The fits (first epoch, end epoch, steps of the first epoch already done) that train what remains of
    `phase`: restored from its (chief's) backup if there is one, the rest of an interrupted epoch first."""
    if not recovery.has_backup(backup_dir):
        return [(phase.first_epoch, phase.end_epoch, 0)]
    recovery.restore(model, backup_dir)
    at = recovery.position(model, phase.first_epoch, job.steps.steps_per_epoch, job.config.grad_accum_steps)
    stopped_after = recovery.early_stop_epoch(backup_dir)
    if at.epoch >= phase.end_epoch or stopped_after:
        # Done: the model holds what the end of its fit left, --ema_decay's averages.
        model.optimizer.finalize_variable_values(model.trainable_variables)
        if stopped_after:
            print(f"[resume] early stopping ended training{f' ({phase.name} phase)' if len(job.phases) > 1 else ''} "
                  f"after epoch {stopped_after} in the earlier run: nothing left to train (to train on, start a new "
                  f"--model_dir with --init_checkpoint={os.path.join(job.model_dir, 'best.keras')})", flush=True)
        return []
    if at.steps:
        print(f"[resume] epoch {at.epoch + 1} step {at.step} ({at.steps} steps of this phase done, optimizer step "
              f"{int(model.optimizer.iterations.numpy())}): the data stream skips their examples", flush=True)
    rest = [(at.epoch + 1, phase.end_epoch, 0)] if at.epoch + 1 < phase.end_epoch else []
    return [(at.epoch, at.epoch + 1, at.step)] + rest if at.step else [(at.epoch, phase.end_epoch, 0)]


def _early_stops(job: Job, backups: list[str]) -> str | None:
    """Where early stopping ended the run's phases (in this run or the one it resumed), from their backups."""
    stops = [f"{f'{phase.name} phase ' if len(job.phases) > 1 else ''}after epoch {epoch}: no new best "
             f"{job.task.best_metric} in {job.config.patience} epochs"
             for phase, backup in zip(job.phases, backups) if (epoch := recovery.early_stop_epoch(backup))]
    return "; ".join(stops) or None


def train(job: Job, model: keras.Model, started: float) -> dict:
    """Starts `model` from --init_checkpoint, fits it phase by phase (resuming a killed run in its phase from
    that phase's backup), validating every epoch in train_and_eval and ending a phase after --patience epochs
    without a new best, and writes the overlays, final.keras, summary.json and the report of best.keras;
    returns the summary."""
    config = job.config
    initialised = finetune.initialise(model, job.task) if config.init_checkpoint else None
    if initialised:
        print(initialised.line(), flush=True)
    if job.is_chief and config.preview_batches > 0:
        preview(job)
    throughput = throughput_logger(job)
    validate = config.mode == "train_and_eval"
    phases = job.phases
    backups, restores = ([finetune.backup_dir(_backup_root(job, chief), phase, last=index == len(phases) - 1)
                          for index, phase in enumerate(phases)] for chief in (False, True))
    for index, phase in enumerate(phases):
        if any(finetune.completed_epochs(later) for later in restores[index + 1:]):
            continue  # a later phase has begun: the run resumes there
        trainable = compile_phase(job, model, phase) if len(phases) > 1 else len(model.trainable_weights)
        if config.init_checkpoint:
            print(f"[phase] {phase.name}: epochs {phase.first_epoch + 1}-{phase.end_epoch}, backbone "
                  f"{'frozen' if phase.frozen_backbone else 'trainable'}"
                  f"{'' if config.train_backbone_bn else ' (its BatchNormalization frozen)'}, {trainable} trainable "
                  "weight tensors", flush=True)
        stopper = keras.callbacks.EarlyStopping(job.task.best_metric, patience=config.patience, mode="max",
                                                verbose=1) if validate and config.patience else None
        for first_epoch, end_epoch, first_step in _spans(job, model, phase, restores[index]):
            with evaluate.quiet_end_of_evaluation():
                model.fit(
                    job.dataset(training=True, on_ready=throughput.clock.note if throughput.clock else None,
                                skip_steps=(first_epoch - phase.first_epoch) * job.steps.steps_per_epoch + first_step),
                    initial_epoch=first_epoch, epochs=end_epoch, steps_per_epoch=job.steps.steps_per_epoch - first_step,
                    # No validation_steps: the evaluation dataset ends after one pass (see pipeline.batches).
                    validation_data=job.dataset(training=False) if validate else None,
                    callbacks=_callbacks(job, throughput, validate, backups[index], stopper, first_epoch, first_step,
                                         ends_phase=end_epoch == phase.end_epoch),
                    verbose=config.verbose, shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
                )
            if model.stop_training:
                break
            if end_epoch < phase.end_epoch:
                # Only the rest of an interrupted epoch: the end of Keras' fit copied one of --ema_decay's raw
                # weights and averages onto the other; the epoch's backup holds both.
                recovery.restore(model, backups[index])
    history_csv = os.path.join(job.model_dir, "history.csv")
    last_row = _last_row(history_csv)
    resolved = job.resolved()
    summary = {
        **last_row, **job.task.summary(last_row),
        "best_metric": job.task.best_metric if validate else "loss",
        "best_value": _best_so_far(history_csv, job.task.best_metric) if validate else None,
        "epochs": job.steps.epochs, "wall_time_seconds": time.perf_counter() - started,
        "stopped_early": _early_stops(job, backups),
        "initialised": initialised.describe() if initialised else None,
        "phases": [phase.describe() for phase in phases],
        "images_per_second": throughput.steady_images_per_second(),
        **{k: resolved[k] for k in ("strategy", "replicas", "precision", "jit_compile", "device_kind", "num_train",
                                    "num_val")},
    }
    if not recovery.all_finite(model):
        raise recovery.NonFiniteLoss("the trained weights are not finite: final.keras not written; the last good "
                                     f"backup is in {backups[-1]}")
    if job.is_chief:
        if validate:
            evaluate.write_overlays(job, model)
        files.write_atomically(os.path.join(job.model_dir, "final.keras"), model.save)
        files.write_json(os.path.join(job.model_dir, "summary.json"), summary, indent=2)
        best = os.path.join(job.model_dir, "best.keras")
        if validate and tf.io.gfile.exists(best):  # the report is of the model the run keeps
            model.load_weights(best)
            report.write(job, model, best)
    return summary
