"""The data modes, which train nothing: `--mode=convert` (TFRecord shards), `--mode=inspect` (a report on the
data) and the augmented-batch previews of `--mode=preview` (also drawn before training)."""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import tensorflow as tf

from datasets import pipeline, tools
from datasets import preview as preview_images
from datasets.sources import tfrecord
from engine import files, tasks
from engine.config import Config, FlagError
from engine.job import Job, load_source, plan_run, source_of


def convert(config: Config) -> dict:
    """`--mode=convert`: writes `--dataset` as TFRecord shards and metadata.json into `--output`."""
    if not config.output:
        raise FlagError("--mode=convert needs --output=DIR for the TFRecord shards")
    source = load_source(config)
    with tools.naming_bad_files(source):
        metadata = tfrecord.convert(source, config.output, config.num_shards, config.seed)
    counts = ", ".join(f"{name} {info['num_examples']} in {len(info['files'])} shards"
                       for name, info in metadata["splits"].items())
    print(f"[engine] converted {config.dataset} to {config.output}: {counts}", flush=True)
    return metadata


def inspect(config: Config) -> dict:
    """`--mode=inspect`: prints and writes (to --model_dir/inspect.json) a report on `--dataset`, and the run
    that `--task` would plan for it (for one replica)."""
    source = source_of(config)
    report = tools.inspect(source)
    task_class = tasks.TASKS[config.task]
    keras.utils.set_random_seed(config.seed)  # the sample of the data a run with this --seed measures
    _, run_plan = plan_run(dataclasses.replace(config, model=config.model or task_class.default_model), source, 1)
    report["plan"] = {"task": config.task, **run_plan.describe()}
    model_dir = config.model_dir or os.path.join("runs", f"inspect-{time.strftime('%Y%m%d-%H%M%S')}")
    tf.io.gfile.makedirs(model_dir)
    files.write_json(os.path.join(model_dir, "inspect.json"), report, indent=2)
    print("\n".join(tools.report_lines(report, source.notes)))
    print(f"[inspect] the run --task={config.task} plans for this data (one replica):")
    print("\n".join(run_plan.lines()))
    print(f"[inspect] report written to {os.path.join(model_dir, 'inspect.json')}")
    return report


def preview(job: Job) -> list[str]:
    """Draws `--preview_batches` augmented training batches (one input pipeline) with their class names into the
    run directory and TensorBoard; returns the PNG paths. They are read without the cache: the same
    augmentation, but not a cache's shuffle buffer, which would decode the whole split for three batches."""
    uncached = dataclasses.replace(job.pipeline_config(training=True, served=False), cache="none")
    with tools.naming_bad_files(job.source):
        batches = list(pipeline.build_dataset(job.train_split, uncached).take(job.config.preview_batches)
                       .as_numpy_iterator())
    paths = preview_images.write(batches, job.task.class_names, job.model_dir, job.config.ignore_value)
    if paths:
        print(f"[engine] {len(paths)} preview grids of augmented training batches in "
              f"{os.path.dirname(paths[0])}", flush=True)
    return paths
