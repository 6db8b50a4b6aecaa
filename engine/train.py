"""The train/eval loop: one path for every task, strategy, precision and XLA setting.

    strategy -> numerics -> data source -> task -> model under strategy.scope() -> fit/evaluate -> summary

Run directory (`--model_dir`), written by the chief:
    config.json        the flags and what `auto` resolved to
    backup/            Keras BackupAndRestore state (weights, optimizer, epoch), written every epoch
    best.keras         the model with the best validation metric so far
    final.keras        the model at the end of training
    history.csv        one row of metrics per epoch, across restarts
    tensorboard/       train/ and validation/ event files; preview/ the augmented batches as images
    preview/           train_batch{i}.png (+ .txt labels): augmented training batches, drawn before training
    summary.json       final metrics, timing and resolved settings
    eval.json          metrics of `--mode=eval` (its flags go to eval_config.json)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
import warnings

import keras
import tensorflow as tf

from datasets import pipeline, tfrecord, validate
from datasets import preview as preview_images
from datasets import spec as dataset_spec
from datasets.augment import Augment
from datasets.sources import DataError, Source, Split
from engine import callbacks as engine_callbacks
from engine import devices, keras_patches, optim, precision, tasks
from engine.config import Config, FlagError, default_cache_dir

MODES = ("train", "eval", "train_and_eval", "convert", "inspect", "preview", "benchmark")


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps make an epoch, and how many epochs make the run."""

    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
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


def pipeline_config(config: Config, task, training: bool) -> pipeline.PipelineConfig:
    """How the run reads its training (or evaluation) split."""
    return pipeline.PipelineConfig(
        image_size=config.image_size, global_batch_size=config.batch_size, training=training,
        seed=config.seed, deterministic=config.deterministic, kind=task.kind,
        augment=task.augment(config) if training else Augment(), ignore_value=config.ignore_value,
        mask_classes=task.num_classes, max_boxes=task.max_boxes, cache=config.cache,
        cache_name="train" if training else "val", map_parallelism=config.map_parallelism,
        prefetch_batches=config.prefetch_batches)


def distributed_dataset(strategy: tf.distribute.Strategy, examples: Split, task, config: Config, training: bool,
                        on_ready=None):
    """`examples` as the task's model inputs, one input pipeline per worker, batches split over replicas."""
    input_fn = pipeline.make_input_fn(examples, pipeline_config(config, task, training), task.model_io, on_ready)
    return strategy.distribute_datasets_from_function(input_fn)


def profile_steps(config: Config) -> tuple[int, int] | int:
    """`--profile_steps=START,STOP` as Keras' TensorBoard callback takes it (0: no profile)."""
    if not config.profile_steps:
        return 0
    try:
        start, stop = (int(step) for step in config.profile_steps.split(","))
    except ValueError:
        raise FlagError(f"--profile_steps={config.profile_steps} must be two step numbers, START,STOP") from None
    if not 1 <= start <= stop:
        raise FlagError(f"--profile_steps={config.profile_steps} needs 1 <= START <= STOP")
    return start, stop


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


def _evaluators(job: Job) -> list[keras.callbacks.Callback]:
    """The task's evaluations outside the compiled metrics (detection: COCO mAP), on one input pipeline."""
    config = pipeline_config(job.config, job.task, training=False)
    return job.task.evaluators(lambda: pipeline.build_dataset(job.val_split, config),
                               job.model_dir if job.is_chief else None)


def _callbacks(job: Job, throughput: engine_callbacks.ThroughputLogger, validate: bool
               ) -> list[keras.callbacks.Callback]:
    task, model_dir, is_chief, worker = job.task, job.model_dir, job.is_chief, job.worker
    # Non-chief workers keep their own backup (every worker must restore) and write nothing else.
    backup_dir = os.path.join(model_dir, "backup") if is_chief else os.path.join(
        model_dir, "workers", f"worker-{worker}", "backup")
    result = [
        throughput,  # first: adds throughput and learning rate to the logs the callbacks below read
        engine_callbacks.MetricDetails(job.metrics),  # per-class values of metrics that have them
        *(_evaluators(job) if validate else []),  # metrics computed outside the graph (detection mAP)
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
                                    update_freq="epoch", profile_batch=profile_steps(job.config)),
    ]
    return result


def _resolve_model_dir(config: Config) -> str:
    if config.model_dir:
        return config.model_dir
    if config.mode == "eval":
        raise FlagError("--mode=eval needs --model_dir: the run directory whose checkpoint to evaluate")
    if config.strategy == "multi_worker_mirrored":
        raise FlagError("--strategy=multi_worker_mirrored needs an explicit --model_dir shared by all workers")
    return os.path.join("runs", f"{config.task}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")


@dataclasses.dataclass
class Job:
    """Everything resolved from a Config before the model is built."""

    config: Config
    strategy: tf.distribute.Strategy
    task: tasks.ClassificationTask | tasks.SegmentationTask | tasks.DetectionTask
    plan: StepPlan
    is_chief: bool
    worker: int
    source: Source
    metrics: list = dataclasses.field(default_factory=list)  # the compiled metric objects (build_model)

    @property
    def train_split(self) -> Split:
        """The training split of the source."""
        return self.source.splits["train"]

    @property
    def val_split(self) -> Split:
        """The validation split of the source."""
        return self.source.splits["val"]

    @property
    def model_dir(self) -> str:
        """The run directory."""
        return self.config.model_dir


def _source_of(config: Config) -> Source:
    """The `--dataset` source as listed (nothing decoded)."""
    if len(config.mask_dirs) != 2:
        raise FlagError(f"--mask_dirs={','.join(config.mask_dirs)} must name two folders: IMAGES,MASKS")
    return dataset_spec.load(config.dataset, config.cache_dir or default_cache_dir(), config.val_fraction,
                             config.seed, config.data_dir, config.tfds_download, tuple(config.mask_dirs),
                             config.mask_classes, config.skip_bad_files, config.skip_bad_labels)


def _load_source(config: Config) -> Source:
    """The `--dataset` source; with `--skip_bad_files`, minus the files that do not decode (logged)."""
    source = _source_of(config)
    if config.skip_bad_files:
        for split, bad in validate.drop_bad_files(source).items():
            print(f"[data] --skip_bad_files: {len(bad)} bad files left out of {split}"
                  + "".join(f"\n  {path}: {reason}" for path, reason in sorted(bad.items())), flush=True)
    return source


@contextlib.contextmanager
def _naming_bad_files(source: Source):
    """Turns a decode failure inside tf.data into a DataError that names the bad files."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        named = error.message.split("bad image file (empty, not an image, or cut short):")
        if len(named) > 1:
            bad = named[1].strip().split("\n")[0].strip()
            raise DataError(f"{bad}: bad image file (empty, not an image, or cut short); fix or remove it, or "
                            "pass --skip_bad_files") from None
        found = {path: reason for name, split in source.splits.items()
                 if isinstance(split, validate.Examples) for path, reason in validate.scan(split).bad.items()}
        if not found:
            raise
        listing = "".join(f"\n  {path}: {reason}" for path, reason in sorted(found.items()))
        raise DataError(f"{len(found)} image files do not decode (pass --skip_bad_files to leave them out):"
                        f"{listing}") from None


def prepare(config: Config) -> Job:
    """Resolves strategy, numerics, data, task and step plan; writes the resolved config; prints one line."""
    if config.mode not in MODES:
        raise FlagError(f"--mode={config.mode} is unknown; choose one of {', '.join(MODES)}")
    try:
        pipeline.validate_cache(config.cache)
    except ValueError as error:
        raise FlagError(str(error)) from error
    profile_steps(config)
    tasks.fill_defaults(config)
    strategy, device = devices.build_strategy(config.strategy, config.cpu_replicas, config.tpu)
    devices.check_batch_size(config.batch_size, strategy)
    keras_patches.patch_for(strategy)
    numerics = precision.resolve(config.precision, config.jit_compile, device, config.model)
    if numerics.jit_compile and device.kind == "CPU" and strategy.num_replicas_in_sync > 1:
        # XLA's CPU backend compiles for one CPU device: a step on the second virtual CPU reads variables of
        # the first and fails ("Trying to access resource ... located in device CPU:1 from device CPU:0").
        raise FlagError(f"--jit_compile=true cannot run on {strategy.num_replicas_in_sync} virtual CPU devices "
                        f"(--strategy={config.strategy}); use --strategy=one_device or --jit_compile=false")
    precision.apply(numerics)
    keras.utils.set_random_seed(config.seed)

    source = _load_source(config)
    task = tasks.make_task(config, source)
    train_examples, val_examples = source.splits["train"], source.splits["val"]
    plan = plan_steps(len(train_examples), config.batch_size, config.epochs, config.train_steps)
    is_chief, worker = devices.worker_role(strategy)
    config.model_dir = _resolve_model_dir(config)
    replicas = strategy.num_replicas_in_sync
    config.resolved = {
        "strategy": type(strategy).__name__, "replicas": replicas, "devices": list(device.names),
        "device_kind": device.kind, "precision": numerics.precision, "jit_compile": numerics.jit_compile,
        "numerics_reason": numerics.reason, "per_replica_batch_size": config.batch_size // replicas,
        "steps_per_epoch": plan.steps_per_epoch, "epochs": plan.epochs, "total_steps": plan.total_steps,
        "num_train": len(train_examples), "num_val": len(val_examples), "class_names": task.class_names,
        "is_chief": is_chief, "augment": dataclasses.asdict(task.augment(config)),
    }
    if is_chief:  # an evaluation must not overwrite the configuration of the training it evaluates
        config.write(os.path.join(config.model_dir, "eval_config.json" if config.mode == "eval" else "config.json"))
    print(f"[engine] {config.task} on {source.name} ({len(train_examples)} train / {len(val_examples)} val, "
          f"{task.num_classes} classes) | strategy {config.strategy} x{replicas} on {device.kind} | batch "
          f"{config.batch_size} ({config.batch_size // replicas}/replica) | {numerics.precision}, XLA "
          f"{'on' if numerics.jit_compile else 'off'} | {plan.epochs} epochs x {plan.steps_per_epoch} steps | "
          f"{config.model_dir}", flush=True)
    print(f"[engine] {numerics.reason}", flush=True)
    return Job(config, strategy, task, plan, is_chief, worker, source)


def build_model(job: Job) -> keras.Model:
    """The task's model, compiled under the strategy with the optimizer, schedule and numerics of `job`."""
    config, plan = job.config, job.plan
    with job.strategy.scope():
        try:
            model = job.task.build_model(config.model, config.image_size, config.weights)
        except ValueError as error:  # a model name or size the task's builders refuse, named in the message
            raise FlagError(str(error)) from error
        job.metrics = job.task.metrics()
        schedule = optim.learning_rate_schedule(config.learning_rate, config.lr_schedule,
                                                round(config.warmup_epochs * plan.steps_per_epoch), plan.total_steps)
        model.compile(optimizer=optim.build_optimizer(config.optimizer, schedule, config.weight_decay,
                                                      config.momentum),
                      **job.task.compile_args(job.metrics),
                      jit_compile=config.resolved["jit_compile"], steps_per_execution=config.steps_per_execution)
    return model


def run(config: Config) -> dict:
    """Runs `config.mode` and returns the summary (train modes) or the evaluation metrics (eval)."""
    started = time.perf_counter()
    if config.mode == "convert":
        return convert(config)
    if config.mode == "inspect":
        return inspect(config)
    job = prepare(config)
    if config.mode == "preview":
        return {"previews": preview(job)}
    model = build_model(job)
    with _naming_bad_files(job.source):
        if config.mode == "eval":
            return evaluate(job, model)
        if config.mode == "benchmark":
            from engine import benchmark  # it builds on this module

            return benchmark.run(job, model)
        return train(job, model, started)


def convert(config: Config) -> dict:
    """`--mode=convert`: writes `--dataset` as TFRecord shards and metadata.json into `--output`."""
    if not config.output:
        raise FlagError("--mode=convert needs --output=DIR for the TFRecord shards")
    source = _load_source(config)
    with _naming_bad_files(source):
        metadata = tfrecord.convert(source, config.output, config.num_shards, config.seed)
    counts = ", ".join(f"{name} {info['num_examples']} in {len(info['files'])} shards"
                       for name, info in metadata["splits"].items())
    print(f"[engine] converted {config.dataset} to {config.output}: {counts}", flush=True)
    return metadata


def inspect(config: Config) -> dict:
    """`--mode=inspect`: prints and writes (to --model_dir/inspect.json) a report on `--dataset`."""
    source = _source_of(config)
    report = validate.inspect(source)
    model_dir = config.model_dir or os.path.join("runs", f"inspect-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "inspect.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"[inspect] {source.name}: {len(source.class_names)} classes")
    for name, entry in report["splits"].items():
        print(f"[inspect] {name}: {entry['examples']} examples")
        for class_name, count in entry.get("per_class", {}).items():
            print(f"    {class_name:24s} {count}")
        if "image_size" in entry:
            size = entry["image_size"]
            print(f"    image height min/median/max {size['height']['min']}/{size['height']['median']:g}/"
                  f"{size['height']['max']}, width {size['width']['min']}/{size['width']['median']:g}/"
                  f"{size['width']['max']}")
        for key in ("bad_files", "labels_without_images", "empty_classes"):
            if entry.get(key):
                print(f"    {key}: {len(entry[key])}" + "".join(f"\n      {item}" for item in entry[key]))
    for key, items in source.notes.items():
        if items:
            print(f"[inspect] {key}: {len(items)}" + "".join(f"\n      {item}" for item in items))
    print(f"[inspect] report written to {os.path.join(model_dir, 'inspect.json')}")
    return report


def preview(job: Job) -> list[str]:
    """Draws `--preview_batches` augmented training batches (one input pipeline, as the run's first replica
    sees them) into the run directory and TensorBoard; returns the PNG paths."""
    config = job.config
    with _naming_bad_files(job.source):
        batches = list(pipeline.build_dataset(job.train_split, pipeline_config(config, job.task, training=True))
                       .take(config.preview_batches).as_numpy_iterator())
    paths = preview_images.write(batches, job.task.class_names, job.model_dir)
    if paths:
        print(f"[engine] {len(paths)} preview grids of augmented training batches in "
              f"{os.path.dirname(paths[0])}", flush=True)
    return paths


@contextlib.contextmanager
def _quiet_end_of_evaluation():
    """Silences Keras' "input ran out of data" warning: evaluation datasets end after one pass by design
    (training datasets repeat forever, so the warning cannot hide a training problem)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _fit(job: Job, model: keras.Model, throughput: engine_callbacks.ThroughputLogger, validate: bool) -> None:
    config = job.config
    model.fit(
        distributed_dataset(job.strategy, job.train_split, job.task, config, training=True,
                     on_ready=throughput.clock.note if throughput.clock else None),
        epochs=job.plan.epochs, steps_per_epoch=job.plan.steps_per_epoch,
        validation_data=distributed_dataset(job.strategy, job.val_split, job.task, config, training=False)
        if validate else None,
        # No validation_steps: the evaluation dataset ends after one pass (see pipeline.build_dataset).
        callbacks=_callbacks(job, throughput, validate),
        verbose=config.verbose, shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
    )


def throughput_logger(job: Job, input_wait: bool = True) -> engine_callbacks.ThroughputLogger:
    """Images/s, step time and, if `input_wait` (but on TPU, whose input pipelines may not run Python), input
    wait per epoch: pass its `clock.note` to the training input as on_ready."""
    clock = None if job.config.strategy == "tpu" or not input_wait else engine_callbacks.InputClock()
    batches_per_step = devices.local_replicas(job.strategy) * job.config.steps_per_execution
    return engine_callbacks.ThroughputLogger(job.config.batch_size, clock, batches_per_step)


def train(job: Job, model: keras.Model, started: float) -> dict:
    """Fits `model` (resuming from the run directory's backup) and writes final.keras and summary.json."""
    config = job.config
    if job.is_chief and config.preview_batches > 0:
        preview(job)
    throughput = throughput_logger(job)
    validate = config.mode == "train_and_eval"
    history_csv = os.path.join(job.model_dir, "history.csv")
    with _quiet_end_of_evaluation():
        _fit(job, model, throughput, validate)
    last_row = _last_row(history_csv)
    summary = {
        **last_row, **job.task.summary(last_row),
        "best_metric": job.task.best_metric if validate else "loss",
        "best_value": _best_so_far(history_csv, job.task.best_metric) if validate else None,
        "epochs": job.plan.epochs, "wall_time_seconds": time.perf_counter() - started,
        "images_per_second": throughput.steady_images_per_second(),
        **{k: config.resolved[k] for k in ("strategy", "replicas", "precision", "jit_compile", "device_kind",
                                          "num_train", "num_val")},
    }
    if job.is_chief:
        if validate:
            write_overlays(job, model)
        model.save(os.path.join(job.model_dir, "final.keras"))
        with open(os.path.join(job.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def write_overlays(job: Job, model: keras.Model, count: int = 8) -> str | None:
    """Draws the task's predictions on the first `count` validation images into RUN/overlays/val.png and
    TensorBoard (tensorboard/overlays); tasks without `draw` have none."""
    if not hasattr(job.task, "draw"):
        return None
    config = pipeline_config(job.config, job.task, training=False)
    batch = next(pipeline.build_dataset(job.val_split, config).as_numpy_iterator())
    batch = {k: v[:count] for k, v in batch.items()}
    predicted = job.task.predict(model, batch["image"])  # (predict_on_batch under mirrored returned twice
    picture = preview_images.grid(job.task.draw(batch, predicted), columns=2)  # the rows: measured)
    path = os.path.join(job.model_dir, "overlays", "val.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(picture))
    with tf.summary.create_file_writer(os.path.join(job.model_dir, "tensorboard", "overlays")).as_default():
        tf.summary.image("val_predictions", picture[None], step=0,
                         description="Validation images: true labels left, predictions right")
    return path


def evaluate(job: Job, model: keras.Model) -> dict:
    """Loads the best (else the latest backed-up) weights of the run directory and evaluates them."""
    candidates = [os.path.join(job.model_dir, "best.keras"),
                  os.path.join(job.model_dir, "backup", "latest.weights.h5")]
    weights = next((path for path in candidates if os.path.exists(path)), None)
    if weights is None:
        raise FlagError(f"--mode=eval: no checkpoint in --model_dir={job.model_dir} "
                        f"(looked for {', '.join(candidates)})")
    model.load_weights(weights)
    val_data = distributed_dataset(job.strategy, job.val_split, job.task, job.config, training=False)
    with _quiet_end_of_evaluation():
        metrics = model.evaluate(val_data, verbose=job.config.verbose, return_dict=True)
    metrics = {f"val_{k}": float(v) for k, v in metrics.items()} | {"weights": weights}
    for metric in job.metrics:
        metrics.update({f"val_{k}": v for k, v in getattr(metric, "details", dict)().items()})
    for evaluator in _evaluators(job):
        metrics.update(evaluator.evaluate(model))
        evaluator.on_train_end()  # writes what it evaluated (detection: COCO JSON)
    metrics.update(job.task.summary(metrics))
    print("[engine] eval " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    for table, title in (("val_per_class_iou", "IoU"), ("val_per_class_ap50", "AP50")):
        if table in metrics:
            print(f"[engine] per-class {title}:\n" + "\n".join(f"    {name:24s} {value:.4f}"
                                                             for name, value in metrics[table].items()))
    if job.is_chief:
        write_overlays(job, model)
    if job.is_chief:
        with open(os.path.join(job.model_dir, "eval.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics
