"""The streaming tf.data pipeline: shard, shuffle, read, decode, batch, prefetch.

`make_input_fn` returns a function of a `tf.distribute.InputContext`, the form
`strategy.distribute_datasets_from_function` takes: each input pipeline reads its own shard of the files and
batches the per-replica batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from datasets import decode
from datasets.sources import Examples


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How a split is read: everything that shapes the stream but not the data itself."""

    image_size: int
    global_batch_size: int
    training: bool
    seed: int = 0
    deterministic: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range
    flip: bool = True


def dataset_options(deterministic: bool) -> tf.data.Options:
    """All tf.data options of the project, set in one place."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _file_table(examples: Examples, seed: int, shuffle: bool) -> dict[str, np.ndarray]:
    """The split as arrays, in a seeded order shared by every input pipeline (so shards are disjoint)."""
    order = np.random.default_rng(seed).permutation(len(examples)) if shuffle else np.arange(len(examples))
    return {
        "path": np.asarray(examples.paths, dtype=object)[order].astype(str),
        "label": np.asarray(examples.labels, dtype=np.int32)[order],
    }


def build_dataset(examples: Examples, config: PipelineConfig, context: tf.distribute.InputContext | None = None,
                  to_model_io: Callable[[dict], tuple] | None = None) -> tf.data.Dataset:
    """Batches of {"image": uint8 [b, s, s, 3], "label": int32 [b]} for one input pipeline.

    Training repeats forever and drops the last partial batch. Evaluation adds "weight" (1 for real examples)
    and pads with zero-weight examples so that every input pipeline yields the same number of full batches,
    `eval_steps(...)` per pass: no replica ever gets an empty or ragged batch, and shapes stay static. It
    repeats too (Keras reuses one iterator across epochs when given steps), so read `eval_steps` per pass.
    `to_model_io` (the task's) maps each batch to the tuple the model trains on.
    """
    context = context or tf.distribute.InputContext()
    batch_size = context.get_per_replica_batch_size(config.global_batch_size)
    ds = tf.data.Dataset.from_tensor_slices(_file_table(examples, config.seed, shuffle=config.training))
    if context.num_input_pipelines > 1:
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    if config.training:
        shard_size = int(ds.cardinality())
        ds = ds.shuffle(shard_size, seed=config.seed + context.input_pipeline_id, reshuffle_each_iteration=True)
        ds = ds.repeat()
        seeds = tf.data.Dataset.random(seed=config.seed * 1000 + context.input_pipeline_id).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda ex, seed: {**ex, "seed": seed})
    ds = ds.map(_preprocess_fn(config), num_parallel_calls=tf.data.AUTOTUNE)
    if not config.training:
        ds = _pad_to_full_batches(ds, len(examples), config, context).repeat()
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    if to_model_io is not None:
        ds = ds.map(to_model_io)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(dataset_options(config.deterministic))


def eval_steps(num_examples: int, global_batch_size: int) -> int:
    """Number of (padded, full) global batches one evaluation pass yields."""
    return -(-num_examples // global_batch_size)


def _pad_to_full_batches(ds: tf.data.Dataset, num_examples: int, config: PipelineConfig,
                         context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Appends zero-weight examples so this pipeline's share fills its batches exactly."""
    pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
    padded_total = eval_steps(num_examples, config.global_batch_size) * config.global_batch_size
    shard_size = len(range(pipeline_id, num_examples, pipelines))
    pad = {
        "image": tf.zeros([config.image_size, config.image_size, 3], tf.uint8),
        "label": tf.constant(0, tf.int32),
        "weight": tf.constant(0.0, tf.float32),
    }
    ds = ds.map(lambda example: {**example, "weight": tf.constant(1.0, tf.float32)})
    return ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padded_total // pipelines - shard_size))


def _preprocess_fn(config: PipelineConfig) -> Callable[[dict], dict]:
    if config.training:
        steps = [decode.read_file, decode.decode_random_crop(config.image_size, config.crop_scale)]
        steps += [decode.random_flip] if config.flip else []
    else:
        steps = [decode.read_file, decode.decode_resize(config.image_size)]

    def apply(example: dict) -> dict:
        for step in steps:
            example = step(example)
        return {"image": example["image"], "label": example["label"]}

    return apply


def make_input_fn(examples: Examples, config: PipelineConfig, to_model_io: Callable[[dict], tuple] | None = None
                  ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The per-input-pipeline dataset function for `strategy.distribute_datasets_from_function`."""
    return lambda context: build_dataset(examples, config, context, to_model_io)
