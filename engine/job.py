"""A run's job: everything resolved from the flags before a model is built, written to config.json.

    flags -> model -> strategy -> numerics -> data source -> plan (engine/plan.py) -> task's defaults -> task -> Job

Run directory (`--model_dir`), written by the chief:
    config.json        the flags (with the task's defaults) and what was resolved: strategy, numerics, data
    backup/            weights, optimizer and position (engine/recovery.py), every epoch and --checkpoint_steps
    backup_frozen/     the same for the epochs with the backbone frozen (--freeze_epochs)
    best.keras         the model with the best validation metric so far
    final.keras        the model at the end of training
    history.csv        one row of metrics per epoch, across restarts
    tensorboard/       train/ and validation/ event files; preview/ the augmented batches as images
    preview/           train_batch{i}.png: augmented training batches with class names, drawn before training
    summary.json       final metrics, timing and resolved settings
    eval.json          metrics of `--mode=eval` (its flags go to eval_config.json)
    report/            the evaluation report of the best checkpoint (engine/report.py)
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import tensorflow as tf

from datasets import pipeline, tools
from datasets.sources import spec
from datasets.sources.base import Source, Split
from engine import devices, files, finetune, keras_patches, plan, precision, tasks
from engine.config import Config, FlagError, default_cache_dir
from engine.devices import DeviceInfo
from engine.plan import Plan, StepPlan
from engine.precision import Numerics
from engine.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything resolved from a Config before the model is built."""

    config: Config  # the flags with the task's defaults and the run directory: what config.json holds
    strategy: tf.distribute.Strategy
    device: DeviceInfo
    numerics: Numerics
    task: Task
    source: Source
    plan: Plan
    is_chief: bool
    worker: int

    @property
    def steps(self) -> StepPlan:
        """The run's steps per epoch and epochs."""
        return self.plan.steps

    @property
    def phases(self) -> list[finetune.Phase]:
        """The run's phases (one unless --freeze_epochs)."""
        return finetune.phases(self.config, self.steps.epochs)

    @property
    def model_dir(self) -> str:
        """The run directory."""
        return self.config.model_dir

    @property
    def train_split(self) -> Split:
        """The training split of the source."""
        return self.source.splits["train"]

    @property
    def val_split(self) -> Split:
        """The validation split of the source."""
        return self.source.splits["val"]

    @property
    def replicas(self) -> int:
        """Replicas in sync."""
        return self.strategy.num_replicas_in_sync

    def pipeline_config(self, training: bool, skip_steps: int = 0, served: bool = True) -> pipeline.PipelineConfig:
        """How the run reads its training (or evaluation) split; training skips `skip_steps` steps' examples,
        through --data_service if set and `served` (evaluation stays local)."""
        config = self.config
        service = config.data_service if training and served else ""
        return pipeline.PipelineConfig(
            recipe=self.task.recipe(training), global_batch_size=config.batch_size, training=training,
            seed=config.seed, deterministic=config.deterministic, cache="none" if service else config.cache,
            cache_name="train" if training else "val", map_parallelism=config.map_parallelism,
            prefetch_batches=config.prefetch_batches, skip_steps=skip_steps, data_service=service,
            service_job=f"{config.model_dir}@{skip_steps}" if service else "")

    def dataset(self, training: bool, on_ready=None, skip_steps: int = 0) -> tf.distribute.DistributedDataset:
        """The training (or validation) split as the task's model inputs, one input pipeline per worker, batches
        split over replicas; `on_ready` (the input clock's) is called as each batch is done; training begins
        after the examples of `skip_steps` steps (a resumed run)."""
        split = self.train_split if training else self.val_split
        input_fn = pipeline.make_input_fn(split, self.pipeline_config(training, skip_steps), self.task.model_io,
                                          on_ready)
        return self.strategy.distribute_datasets_from_function(input_fn)

    def resolved(self) -> dict:
        """What the flags resolved to, for config.json."""
        return {
            "strategy": type(self.strategy).__name__, "replicas": self.replicas, "devices": list(self.device.names),
            "device_kind": self.device.kind, "precision": self.numerics.precision,
            "jit_compile": self.numerics.jit_compile, "numerics_reason": self.numerics.reason,
            "per_replica_batch_size": self.config.batch_size // self.replicas,
            "steps_per_epoch": self.steps.steps_per_epoch, "epochs": self.steps.epochs,
            "total_steps": self.steps.total_steps, "num_train": len(self.train_split), "num_val": len(self.val_split),
            "class_names": self.task.class_names, "is_chief": self.is_chief,
            "augment": dataclasses.asdict(self.task.augment()), "plan": self.plan.describe(),
            "init_checkpoint_file": finetune.checkpoint_file(self.config.init_checkpoint)
            if self.config.init_checkpoint not in ("", finetune.IMAGENET) else None,
            "phases": [phase.describe() for phase in self.phases],
        }


def source_of(config: Config) -> Source:
    """The `--dataset` source as listed (nothing decoded)."""
    return spec.load(config.dataset, config.cache_dir or default_cache_dir(), config.val_fraction, config.seed,
                     config.data_dir, config.tfds_download, tuple(config.mask_dirs), config.mask_classes,
                     config.skip_bad_files, config.skip_bad_labels)


def load_source(config: Config) -> Source:
    """The `--dataset` source; with `--skip_bad_files`, minus the files that do not decode (logged)."""
    source = source_of(config)
    if config.skip_bad_files:
        for split, bad in tools.drop_bad_files(source).items():
            print(f"[data] --skip_bad_files: {len(bad)} bad files left out of {split}"
                  + "".join(f"\n  {path}: {reason}" for path, reason in sorted(bad.items())), flush=True)
    return source


def _model_dir(config: Config) -> str:
    if config.model_dir:
        return config.model_dir
    if config.mode == "eval":
        raise FlagError("--mode=eval needs --model_dir: the run directory whose checkpoint to evaluate")
    if config.strategy == "multi_worker_mirrored":
        raise FlagError("--strategy=multi_worker_mirrored needs an explicit --model_dir shared by all workers")
    return os.path.join("runs", f"{config.task}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def plan_run(config: Config, source: Source, replicas: int) -> tuple[Config, Plan]:
    """The run planned from `source` for the flags left unset (engine/plan.py), and the config with the plan's
    values and then the task's defaults filled in."""
    task_class = tasks.TASKS[config.task]
    profile = task_class.profile(source, config)
    run_plan = plan.make(config, task_class.min_steps, task_class.planned(config, profile), profile, replicas)
    config = task_class.with_defaults(dataclasses.replace(config, **run_plan.flags))
    if config.cache == "auto":
        train, val = source.splits["train"], source.splits["val"]
        run_plan = run_plan.with_flag("cache", *plan.cache(config, len(train) + len(val), train.in_memory,
                                                           task_class.profile_targets(source).masks))
        config = dataclasses.replace(config, cache=run_plan.flags["cache"])
    return config, run_plan


def prepare(config: Config) -> Job:
    """Resolves the model, strategy, numerics, data, plan and task; writes config.json; prints the plan."""
    task_class = tasks.TASKS[config.task]
    config = dataclasses.replace(config, model=config.model or task_class.default_model)
    config = dataclasses.replace(config, model_dir=_model_dir(config))
    strategy, device = devices.build_strategy(config.strategy, config.cpu_replicas, config.tpu)
    keras_patches.patch_for(strategy, config.steps_per_execution)
    numerics = precision.resolve(config.precision, config.jit_compile, device, config.model)
    if numerics.jit_compile and device.kind == "CPU" and strategy.num_replicas_in_sync > 1:
        # XLA's CPU backend compiles for one CPU device: a step on the second virtual CPU reads variables of
        # the first and fails ("Trying to access resource ... located in device CPU:1 from device CPU:0").
        raise FlagError(f"--jit_compile=true cannot run on {strategy.num_replicas_in_sync} virtual CPU devices "
                        f"(--strategy={config.strategy}); use --strategy=one_device or --jit_compile=false")
    if config.grad_accum_steps > 1 and strategy.num_replicas_in_sync > 1:
        # Keras applies accumulated gradients inside a cond, where a distribution strategy cannot merge its
        # replicas' updates ("merge_call called while defining a new graph"): keras-team/keras#20582.
        raise FlagError(f"--grad_accum_steps={config.grad_accum_steps} runs on one replica only (Keras cannot "
                        f"accumulate under {strategy.num_replicas_in_sync} replicas, keras-team/keras#20582); use "
                        "--strategy=one_device, or a larger --batch_size across the replicas")
    if config.init_checkpoint == finetune.IMAGENET and config.task != "classification":
        raise FlagError(f"--init_checkpoint={finetune.IMAGENET} starts keras.applications classifiers only; "
                        f"for --task={config.task} pass a run directory or .keras file")
    if config.init_checkpoint not in ("", finetune.IMAGENET):
        finetune.checkpoint_file(config.init_checkpoint)  # a missing file fails now, not after the data is read
    precision.apply(numerics)
    keras.utils.set_random_seed(config.seed)

    source = load_source(config)
    config, run_plan = plan_run(config, source, strategy.num_replicas_in_sync)
    devices.check_batch_size(config.batch_size, strategy)
    task = task_class.from_source(config, source)
    is_chief, worker = devices.worker_role(strategy)
    job = Job(task.config, strategy, device, numerics, task, source, run_plan, is_chief, worker)
    if is_chief:  # an evaluation must not overwrite the configuration of the training it evaluates
        write_config(job, "eval_config.json" if config.mode == "eval" else "config.json")
    print(f"[engine] {config.task} on {source.name} ({len(job.train_split)} train / {len(job.val_split)} val, "
          f"{task.num_classes} classes) | strategy {config.strategy} x{job.replicas} on {device.kind} | batch "
          f"{config.batch_size} ({config.batch_size // job.replicas}/replica) | {config.image_size} px | "
          f"{numerics.precision}, XLA {'on' if numerics.jit_compile else 'off'} | {job.steps.epochs} epochs x "
          f"{job.steps.steps_per_epoch} steps | {job.model_dir}", flush=True)
    print(f"[engine] {numerics.reason}", flush=True)
    print("\n".join(run_plan.lines()), flush=True)
    return job


def write_config(job: Job, name: str) -> None:
    """Writes the job's flags and what they resolved to as `name` in the run directory."""
    tf.io.gfile.makedirs(job.model_dir)
    files.write_json(os.path.join(job.model_dir, name), {**dataclasses.asdict(job.config), "resolved": job.resolved()},
                     indent=2, sort_keys=True)
