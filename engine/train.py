"""The train/eval loop: one path for every task, strategy, precision and XLA setting.

    strategy -> numerics -> data source -> task -> model under strategy.scope() -> fit/evaluate -> summary

Run directory (`--model_dir`), written by the chief:
    config.json        the flags and what `auto` resolved to
    backup/            Keras BackupAndRestore state (weights, optimizer, epoch), written every epoch
    best.keras         the model with the best validation metric so far
    final.keras        the model at the end of training
    history.csv        one row of metrics per epoch, across restarts
    tensorboard/       train/ and validation/ event files
    summary.json       final metrics, timing and resolved settings
    eval.json          metrics of `--mode=eval`
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

from datasets import pipeline
from datasets import spec as dataset_spec
from datasets.sources import Examples
from engine import callbacks as engine_callbacks
from engine import devices, optim, precision, tasks
from engine.config import Config, FlagError, default_cache_dir

MODES = ("train", "eval", "train_and_eval")


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps make an epoch, and how many epochs make the run."""

    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def plan_steps(num_train: int, global_batch_size: int, epochs: int, train_steps: int) -> StepPlan:
    """Full epochs of `num_train` examples (last partial batch dropped), or about `train_steps` steps."""
    natural = num_train // global_batch_size
    if natural < 1:
        raise FlagError(f"--batch_size={global_batch_size} exceeds the {num_train} training examples")
    if train_steps > 0:
        run_epochs = math.ceil(train_steps / natural)
        return StepPlan(math.ceil(train_steps / run_epochs), run_epochs)
    if epochs < 1:
        raise FlagError(f"--epochs={epochs} must be at least 1 (or set --train_steps)")
    return StepPlan(natural, epochs)


def _distributed(strategy: tf.distribute.Strategy, examples: Examples, task, config: Config, training: bool):
    pipeline_config = pipeline.PipelineConfig(
        image_size=config.image_size, global_batch_size=config.batch_size, training=training,
        seed=config.seed, deterministic=config.deterministic)
    input_fn = pipeline.make_input_fn(examples, pipeline_config, task.model_io)
    return strategy.distribute_datasets_from_function(input_fn)


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
    return {k: float(v) if k != "epoch" else int(v) for k, v in rows[-1].items() if v != ""} if rows else {}


def _callbacks(config: Config, task, model_dir: str, is_chief: bool, worker: int,
               throughput: engine_callbacks.ThroughputLogger, validate: bool) -> list[keras.callbacks.Callback]:
    # Non-chief workers keep their own backup (every worker must restore) and write nothing else.
    backup_dir = os.path.join(model_dir, "backup") if is_chief else os.path.join(
        model_dir, "workers", f"worker-{worker}", "backup")
    result = [
        throughput,  # first: adds throughput and learning rate to the logs the callbacks below read
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", double_checkpoint=True,
                                         delete_checkpoint=False),
    ]
    if not is_chief:
        return result
    history_csv = os.path.join(model_dir, "history.csv")
    monitor = task.best_metric if validate else "loss"
    mode = "max" if validate else "min"
    result += [
        keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "best.keras"), monitor=monitor, mode=mode,
                                        save_best_only=True,
                                        initial_value_threshold=_best_so_far(history_csv, monitor)
                                        if validate else None),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard"), write_graph=False,
                                    update_freq="epoch", profile_batch=0),
    ]
    return result


def _resolve_model_dir(config: Config) -> str:
    if config.model_dir:
        return config.model_dir
    if config.strategy == "multi_worker_mirrored":
        raise FlagError("--strategy=multi_worker_mirrored needs an explicit --model_dir shared by all workers")
    return os.path.join("runs", f"{config.task}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(config: Config) -> dict:
    """Runs `config.mode` and returns the summary (train modes) or the evaluation metrics (eval)."""
    if config.mode not in MODES:
        raise FlagError(f"--mode={config.mode} is unknown; choose one of {', '.join(MODES)}")
    started = time.perf_counter()
    strategy, device = devices.build_strategy(config.strategy, config.cpu_replicas, config.tpu)
    devices.check_batch_size(config.batch_size, strategy)
    numerics = precision.resolve(config.precision, config.jit_compile, device)
    precision.apply(numerics)
    keras.utils.set_random_seed(config.seed)

    source = dataset_spec.load(config.dataset, config.cache_dir or default_cache_dir(), config.val_fraction,
                               config.seed)
    task = tasks.make_task(config.task, source)
    train_examples, val_examples = source.splits["train"], source.splits["val"]
    plan = plan_steps(len(train_examples), config.batch_size, config.epochs, config.train_steps)
    is_chief, worker = devices.worker_role(strategy)
    model_dir = _resolve_model_dir(config)
    config.model_dir = model_dir
    config.resolved = {
        "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
        "devices": list(device.names), "device_kind": device.kind,
        "precision": numerics.precision, "jit_compile": numerics.jit_compile, "numerics_reason": numerics.reason,
        "per_replica_batch_size": config.batch_size // strategy.num_replicas_in_sync,
        "steps_per_epoch": plan.steps_per_epoch, "epochs": plan.epochs, "total_steps": plan.total_steps,
        "num_train": len(train_examples), "num_val": len(val_examples), "class_names": task.class_names,
        "is_chief": is_chief,
    }
    if is_chief:
        config.write(os.path.join(model_dir, "config.json"))
    tf.get_logger().setLevel("WARNING")  # tf.distribute logs every all-reduce it sets up at INFO
    print(f"[engine] {config.task} on {source.name} ({len(train_examples)} train / {len(val_examples)} val, "
          f"{task.num_classes} classes) | {type(strategy).__name__} x{strategy.num_replicas_in_sync} on "
          f"{device.kind} | batch {config.batch_size} ({config.resolved['per_replica_batch_size']}/replica) | "
          f"{numerics.precision}, XLA {'on' if numerics.jit_compile else 'off'} | {plan.epochs} epochs x "
          f"{plan.steps_per_epoch} steps | {model_dir}", flush=True)
    print(f"[engine] {numerics.reason}", flush=True)

    with strategy.scope():
        model = task.build_model(config.model, config.image_size, config.weights)
        schedule = optim.learning_rate_schedule(config.learning_rate, config.lr_schedule,
                                                round(config.warmup_epochs * plan.steps_per_epoch), plan.total_steps)
        model.compile(optimizer=optim.build_optimizer(config.optimizer, schedule, config.weight_decay,
                                                      config.momentum),
                      loss=task.loss(), weighted_metrics=task.metrics(), jit_compile=numerics.jit_compile,
                      steps_per_execution=config.steps_per_execution)

    val_data = _distributed(strategy, val_examples, task, config, training=False)
    val_steps = pipeline.eval_steps(len(val_examples), config.batch_size)
    if config.mode == "eval":
        return evaluate(model, val_data, val_steps, model_dir, is_chief, config.verbose)

    throughput = engine_callbacks.ThroughputLogger(config.batch_size)
    validate = config.mode == "train_and_eval"
    model.fit(
        _distributed(strategy, train_examples, task, config, training=True),
        epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch,
        validation_data=val_data if validate else None, validation_steps=val_steps if validate else None,
        callbacks=_callbacks(config, task, model_dir, is_chief, worker, throughput, validate),
        verbose=config.verbose,
    )
    summary = {
        **_last_row(os.path.join(model_dir, "history.csv")),
        "best_metric": task.best_metric if validate else "loss",
        "best_value": _best_so_far(os.path.join(model_dir, "history.csv"), task.best_metric) if validate else None,
        "epochs": plan.epochs, "wall_time_seconds": time.perf_counter() - started,
        "images_per_second": throughput.steady_images_per_second(),
        **{k: config.resolved[k] for k in ("strategy", "replicas", "precision", "jit_compile", "device_kind",
                                          "num_train", "num_val")},
    }
    if is_chief:
        model.save(os.path.join(model_dir, "final.keras"))
        with open(os.path.join(model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def evaluate(model: keras.Model, val_data, val_steps: int, model_dir: str, is_chief: bool, verbose: int) -> dict:
    """Loads the best (else the latest backed-up) weights from `model_dir` and evaluates them."""
    candidates = [os.path.join(model_dir, "best.keras"), os.path.join(model_dir, "backup", "latest.weights.h5")]
    weights = next((path for path in candidates if os.path.exists(path)), None)
    if weights is None:
        raise FileNotFoundError(f"--mode=eval: no checkpoint in --model_dir={model_dir} "
                                f"(looked for {', '.join(candidates)})")
    model.load_weights(weights)
    metrics = model.evaluate(val_data, steps=val_steps, verbose=verbose, return_dict=True)
    metrics = {f"val_{k}": float(v) for k, v in metrics.items()} | {"weights": weights}
    print("[engine] eval " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "weights"))
    if is_chief:
        with open(os.path.join(model_dir, "eval.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics
