"""The streaming tf.data pipeline, in two parts:

  batches()      records -> check -> preprocess -> [cache] -> augment -> batch -> batch augment: graph ops only
                 (serialisable, e.g. for the tf.data service)
  client_tail()  the model's view of a batch (the task's `model_io`), the input clock's Python call,
                 prefetch and options: what stays on the trainer

`build_dataset` joins them; `make_input_fn` returns it as a function of a `tf.distribute.InputContext`, the
form `strategy.distribute_datasets_from_function` takes: each input pipeline reads its own shard of the data
and batches the per-replica batch size. Every source (`datasets/sources/`) enters through `Split.records`;
what depends on the kind of labels comes from the config's recipe (`datasets/recipes.py`).

`--cache` keeps the recipe's deterministic steps' output, before any random augmentation, so every epoch
still sees new crops and augmentations.

With `--data_service` the training `batches` run on tf.data service workers (`_service_stream`): the
dispatcher hands out chunks of each epoch (rows, or TFRecord shards) in order, so every example goes out once
per epoch across the workers, and each example's augmentation is a function of its place in its epoch,
whichever worker makes it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import tensorflow as tf

from datasets.budget import physical_memory_bytes
from datasets.ops import decode
from datasets.recipes import Recipe, compose
from datasets.sources.base import DataError, Parse, Split, every_epoch, shuffle_share

SERVICE_CHUNK_BATCHES = 4  # per-replica batches of rows in each chunk the tf.data service hands a worker

@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How a split is read: everything that shapes the stream but not the data itself."""

    recipe: Recipe
    global_batch_size: int
    training: bool
    seed: int = 0
    deterministic: bool = False
    cache: str = "none"  # none, memory or disk:PATH
    cache_name: str = "train"  # distinguishes splits inside a disk cache directory
    map_parallelism: int = 0  # parallel calls of every map; 0: tf.data's autotuning
    prefetch_batches: int = -1  # batches prefetched at the end; -1: autotuned, 0: none
    skip_steps: int = 0  # training: global steps' examples already trained on (a resumed run), skipped undecoded
    data_service: str = ""  # training: the tf.data service dispatcher (grpc://HOST:PORT) that makes the batches
    service_job: str = ""  # the service's job name: the trainer's input pipelines share one job


def dataset_options(deterministic: bool, prefetch: bool = True) -> tf.data.Options:
    """All tf.data options of the project, set in one place (`prefetch` False: none injected either)."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.inject_prefetch = prefetch
    options.autotune.enabled = True
    options.autotune.ram_budget = physical_memory_bytes() // 2
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from parallel map and interleave
    options.experimental_optimization.map_parallelization = True
    # Batches are copied by one thread: parallel copying cost ~5% of the plain pipeline's CPU on 2 cores and
    # gained nothing (measured against benchmarks/input_pipeline.py's `reference`).
    options.experimental_optimization.parallel_batch = False
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _cache(ds: tf.data.Dataset, config: PipelineConfig, context: tf.distribute.InputContext) -> tf.data.Dataset:
    if config.cache == "memory":
        return ds.cache()
    directory = config.cache[len("disk:"):]
    tf.io.gfile.makedirs(directory)
    name = (f"{config.cache_name}-{config.recipe.cache_size(config.training)}px-pipeline"
            f"{context.input_pipeline_id}of{context.num_input_pipelines}")
    return ds.cache(os.path.join(directory, name))


def _positioned(ds: tf.data.Dataset, config: PipelineConfig, context: tf.distribute.InputContext
                ) -> tf.data.Dataset:
    """(element, position in this pipeline's stream) pairs. A resumed run (`skip_steps`) skips its pipeline's
    share of the examples trained on, with their positions, before they are read or decoded: the stream goes on
    where the backup was taken."""
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(2**62))
    if config.skip_steps:
        ds = ds.skip(config.skip_steps * config.global_batch_size // context.num_input_pipelines)
    return ds


def _service_stream(split: Split, config: PipelineConfig, batch_size: int) -> tf.data.Dataset:
    """(element, position) pairs of the training stream for the tf.data service. The only source its
    dispatcher splits is a range of chunk indices, handed out in order; C chunks make an epoch, each read on its
    own (`service_chunk`: rows of a table split, one file of TFRecord shards). A resumed run restarts the data
    epoch its backup is in: delivery order through the service is not deterministic, so the exact example
    cannot be found again."""
    if not hasattr(split, "service_chunk"):
        raise DataError(f"--data_service serves image folders, arrays and TFRecord shards; {type(split).__name__} "
                        "data is read locally (leave --data_service unset)")
    chunks = split.service_chunks(SERVICE_CHUNK_BATCHES * batch_size)
    first_epoch = config.skip_steps * config.global_batch_size // len(split)
    return tf.data.Dataset.range(first_epoch * chunks, 2**62).flat_map(
        lambda index: split.service_chunk(index, chunks, config.seed, config.recipe.targets))


def _seeded(pairs: tf.data.Dataset, parse: Parse, step: Callable[[dict], dict], config: PipelineConfig,
            context: tf.distribute.InputContext) -> tf.data.Dataset:
    """(element, position) `pairs` parsed (if `parse`) and mapped by `step` in one map, with a per-example
    stateless "seed" [2] added between: (pipeline seed, position), so random augmentation is a function of the
    run seed and the position."""
    base = tf.constant(config.seed * 1000 + context.input_pipeline_id, tf.int64)

    def apply(element, position: tf.Tensor) -> dict:
        record = parse(element) if parse else element
        return step({**record, "seed": tf.stack([base, position])})

    return pairs.map(apply, num_parallel_calls=config.map_parallelism or tf.data.AUTOTUNE)


def _keep(*keys: str) -> Callable[[dict], dict]:
    return lambda example: {k: example[k] for k in keys}


def batches(split: Split, config: PipelineConfig, context: tf.distribute.InputContext | None = None
            ) -> tf.data.Dataset:
    """Batches of the recipe's `output_keys`, in graph ops only: "image" uint8 [b, s, s, 3] and the labels.

    Training repeats forever and drops the last partial batch. Evaluation adds "weight" (1 for real examples)
    and pads with zero-weight examples so that every input pipeline yields the same number of full batches,
    `eval_steps(...)`, then ends: no replica ever gets an empty or ragged batch, and shapes stay static. (A
    repeating evaluation dataset cost 3-13 s per epoch under MirroredStrategy: Keras drops the validation
    iterator every epoch, and dropping one with work in flight waits for it; measured.)
    """
    context = context or tf.distribute.InputContext()
    recipe = config.recipe
    batch_size = context.get_per_replica_batch_size(config.global_batch_size)
    cached = config.cache != "none"
    parallel = config.map_parallelism or tf.data.AUTOTUNE
    fixed, random = recipe.training_steps(cached) if config.training else ([recipe.preprocess()], [])
    # every encoded image is checked before it is decoded; elements are parsed inside the first map
    fixed, random = ([decode.check_encoded, *fixed], random) if fixed else ([], [decode.check_encoded, *random])
    keys = recipe.output_keys(config.training)
    batch_step = recipe.batch_step(cached)  # None: nothing to do per batch, and no map for it
    keep = _keep(*keys, *(["seed"] if batch_step else []))  # the seed, if the per-batch step needs it
    if config.training and config.data_service:  # every step in one map on the service's workers, from the row on
        _, parse = split.stream(context, config.seed, False, recipe.targets)
        steps = [*fixed, _keep(*keys, "seed")] if fixed else []
        ds = _seeded(_service_stream(split, config, batch_size), parse, compose(*steps, *random, keep), config, context)
        return _batched(ds, recipe, batch_size, batch_step, parallel)
    # training streams shuffle every epoch; a training cache fills in epoch 0's order, which training reads as
    # it fills (no wait for the whole split to decode), and later epochs shuffle what it holds
    if not config.training:
        ds, parse = split.stream(context, config.seed, False, recipe.targets)
    else:
        ds, parse = (split.first_epoch if cached else split.epochs)(context, config.seed, recipe.targets)
    if fixed:  # the deterministic steps, in the first map
        ds = ds.map(compose(*([parse] if parse else []), *fixed, _keep(*keys)), num_parallel_calls=parallel)
    if cached:
        ds = _cache(ds, config, context)  # train and val alike
    if not config.training:
        return _pad_to_full_batches(ds, len(split), config, context).batch(batch_size, drop_remainder=True)
    if cached:
        stored, bytes_per_example = ds, recipe.cache_size(True) ** 2 * 3
        ds = stored.concatenate(every_epoch(lambda epoch: shuffle_share(
            stored, len(split), bytes_per_example, context, config.seed, epoch), first=1))
    ds = _seeded(_positioned(ds, config, context), None if fixed else parse, compose(*random, keep), config, context)
    return _batched(ds, recipe, batch_size, batch_step, parallel)


def _batched(ds: tf.data.Dataset, recipe: Recipe, batch_size: int, batch_step: Callable[[dict], dict] | None,
             parallel: int) -> tf.data.Dataset:
    """Training's examples in batches of `batch_size`, through the recipe's `batch_step` if it has one (which
    augments `batch_group` batches at once)."""
    ds = ds.batch(recipe.batch_group * batch_size, drop_remainder=True)
    if batch_step:
        ds = ds.map(batch_step, num_parallel_calls=parallel)
    return ds.rebatch(batch_size, drop_remainder=True) if recipe.batch_group > 1 else ds


def client_tail(ds: tf.data.Dataset, config: PipelineConfig, to_model_io: Callable[[dict], tuple] | None = None,
                on_ready: Callable[[], None] | None = None) -> tf.data.Dataset:
    """`ds` mapped by `to_model_io` (the task's: a batch to the tuple the model trains on), then, if given,
    `on_ready` called (in Python, in stream order) as each batch is done, before the final prefetch: the
    engine times how long training steps wait for their input with it."""
    if to_model_io is not None:
        ds = ds.map(to_model_io)
    if on_ready is not None:
        ds = ds.map(_calling(on_ready))
    if config.prefetch_batches:
        ds = ds.prefetch(tf.data.AUTOTUNE if config.prefetch_batches < 0 else config.prefetch_batches)
    return ds.with_options(dataset_options(config.deterministic, prefetch=config.prefetch_batches != 0))


# The pipeline's functions are plain graph code (no Python control flow on tensors): built inside do_not_convert,
# tf.data traces its map functions without AutoGraph, which took ~0.65 s of the first build (measured). The
# tf.functions they call (jit_compile'd ops) are still converted: tracing one turns AutoGraph back on.
@tf.autograph.experimental.do_not_convert
def build_dataset(split: Split, config: PipelineConfig, context: tf.distribute.InputContext | None = None,
                  to_model_io: Callable[[dict], tuple] | None = None,
                  on_ready: Callable[[], None] | None = None) -> tf.data.Dataset:
    """The whole pipeline for one input pipeline: `batches` (training's through `--data_service` when set: its
    distributed-epoch mode, one job shared by the trainer's input pipelines), then `client_tail`."""
    ds = batches(split, config, context)
    if config.training and config.data_service:
        ds = ds.with_options(dataset_options(config.deterministic)).apply(tf.data.experimental.service.distribute(
            "distributed_epoch", config.data_service, job_name=config.service_job or None))
    return client_tail(ds, config, to_model_io, on_ready)


def _calling(function: Callable[[], None]) -> Callable:
    """A map function passing elements through unchanged once `function` has run (a Python call)."""

    def apply(*element):
        done = tf.py_function(lambda: function() or 0, [], tf.int32)
        with tf.control_dependencies([done]):
            element = tf.nest.map_structure(tf.identity, element)
        return element if len(element) > 1 else element[0]

    return apply


def eval_steps(num_examples: int, global_batch_size: int) -> int:
    """Number of (padded, full) global batches one evaluation pass yields."""
    return -(-num_examples // global_batch_size)


def _pad_to_full_batches(ds: tf.data.Dataset, num_examples: int, config: PipelineConfig,
                         context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Appends zero-weight examples so this pipeline's share fills its batches exactly."""
    pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
    padded_total = eval_steps(num_examples, config.global_batch_size) * config.global_batch_size
    shard_size = len(range(pipeline_id, num_examples, pipelines))
    pad = {**config.recipe.padding(ds.element_spec), "weight": tf.constant(0.0, tf.float32)}
    ds = ds.map(lambda example: {**example, "weight": tf.constant(1.0, tf.float32)})
    return ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padded_total // pipelines - shard_size))


def make_input_fn(split: Split, config: PipelineConfig, to_model_io: Callable[[dict], tuple] | None = None,
                  on_ready: Callable[[], None] | None = None) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The per-input-pipeline dataset function for `strategy.distribute_datasets_from_function`."""
    return lambda context: build_dataset(split, config, context, to_model_io, on_ready)
