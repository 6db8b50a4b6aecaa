"""The streaming tf.data pipeline: records -> decode -> [cache] -> augment -> batch -> batch augment -> prefetch.

`make_input_fn` returns a function of a `tf.distribute.InputContext`, the form
`strategy.distribute_datasets_from_function` takes: each input pipeline reads its own shard of the data and
batches the per-replica batch size. Every source (`datasets/sources.py`) enters through `Split.records`.

`--cache` keeps decoded images, resized to `cache_size` (8/7 of the training size), before any random
augmentation: training then takes plain random crops of the training size from the cached pixels (the classic
"resize 256, crop 224" recipe, no resize per step), so every epoch still sees new crops. Without a cache,
training uses random-resized crops (`Augment.crop_scale`) fused with JPEG decoding. Segmentation and
detection data are letterboxed to the image size per example (and cached there, if asked) and augmented per
batch (`datasets/augment.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import tensorflow as tf

from datasets import augment as augmentation
from datasets import decode, spatial, validate
from datasets.budget import physical_memory_bytes
from datasets.sources import Split, Targets, shuffle_share

CACHE_CHOICES = "none | memory | disk:PATH"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How a split is read: everything that shapes the stream but not the data itself."""

    image_size: int
    global_batch_size: int
    training: bool
    seed: int = 0
    deterministic: bool = False
    kind: str = "classification"  # which labels: one of augment.KINDS
    augment: augmentation.Augment = augmentation.Augment()  # training only
    ignore_value: int = 255  # segmentation: mask value of unlabelled pixels (padding included)
    mask_classes: int = 256  # segmentation: mask values at or above this (but the ignore value) are errors
    max_boxes: int = 100  # detection: boxes per image, padded
    cache: str = "none"  # CACHE_CHOICES
    cache_name: str = "train"  # distinguishes splits inside a disk cache directory
    map_parallelism: int = 0  # parallel calls of every map and batch; 0: tf.data's autotuning
    prefetch_batches: int = -1  # batches prefetched at the end; -1: autotuned, 0: none

    @property
    def cache_size(self) -> int:
        """Side of cached training images: classification crops come from a 8/7 larger image (256 for 224)."""
        return round(self.image_size * 8 / 7) if self.training and self.kind == "classification" else self.image_size

    @property
    def targets(self) -> Targets:
        """What the records must carry for `kind`."""
        return Targets(masks=self.kind == "segmentation", max_boxes=self.max_boxes if self.kind == "detection" else 0)

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The keys of every batch (evaluation adds "weight"; detection evaluation the file "id" and the
        "original_size" [h, w] that map boxes back to the original image)."""
        if self.kind == "detection":
            return ("image", "boxes", "classes") + (() if self.training else ("id", "original_size"))
        return {"classification": ("image", "label"), "segmentation": ("image", "mask")}[self.kind]


def dataset_options(deterministic: bool, prefetch: bool = True) -> tf.data.Options:
    """All tf.data options of the project, set in one place (`prefetch` False: none injected either)."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.inject_prefetch = prefetch
    options.autotune.enabled = True
    options.autotune.ram_budget = physical_memory_bytes() // 2
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from parallel map and interleave
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def validate_cache(cache: str) -> None:
    """Raises ValueError unless `cache` is one of CACHE_CHOICES."""
    if cache not in ("none", "memory") and not (cache.startswith("disk:") and len(cache) > 5):
        raise ValueError(f"--cache={cache} is not one of {CACHE_CHOICES}")


def _cache(ds: tf.data.Dataset, config: PipelineConfig, context: tf.distribute.InputContext) -> tf.data.Dataset:
    if config.cache == "memory":
        return ds.cache()
    directory = config.cache[len("disk:"):]
    os.makedirs(directory, exist_ok=True)
    name = (f"{config.cache_name}-{config.cache_size}px-pipeline{context.input_pipeline_id}"
            f"of{context.num_input_pipelines}")
    return ds.cache(os.path.join(directory, name))


def _seeded(ds: tf.data.Dataset, config: PipelineConfig, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Adds a per-example stateless "seed": random augmentation is a function of (run seed, position)."""
    seeds = tf.data.Dataset.random(seed=config.seed * 1000 + context.input_pipeline_id).batch(2)
    return tf.data.Dataset.zip(ds, seeds).map(lambda example, seed: {**example, "seed": seed})


def _compose(*steps: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def apply(example: dict) -> dict:
        for step in steps:
            example = step(example)
        return example

    return apply


def build_dataset(split: Split, config: PipelineConfig, context: tf.distribute.InputContext | None = None,
                  to_model_io: Callable[[dict], tuple] | None = None,
                  on_ready: Callable[[], None] | None = None) -> tf.data.Dataset:
    """Batches of `config.output_keys`: "image" uint8 [b, s, s, 3] and "label" int32 [b] (float32 [b, classes]
    with MixUp/CutMix), or "mask" uint8 [b, s, s, 1], or "boxes" float32 [b, max_boxes, 4] and "classes".

    Training repeats forever and drops the last partial batch. Evaluation adds "weight" (1 for real examples)
    and pads with zero-weight examples so that every input pipeline yields the same number of full batches,
    `eval_steps(...)`, then ends: no replica ever gets an empty or ragged batch, and shapes stay static. (A
    repeating evaluation dataset cost 3-13 s per epoch under MirroredStrategy: Keras drops the validation
    iterator every epoch, and dropping one with work in flight waits for it; measured.)
    `to_model_io` (the task's) maps each batch to the tuple the model trains on. `on_ready`, if given, is
    called (in Python, in stream order) as each batch is done, before the final prefetch: the engine times
    how long training steps wait for their input with it.
    """
    context = context or tf.distribute.InputContext()
    validate_cache(config.cache)
    if config.kind not in augmentation.KINDS:
        raise ValueError(f"kind {config.kind} is not one of {augmentation.KINDS}")
    batch_size = context.get_per_replica_batch_size(config.global_batch_size)
    cached = config.cache != "none"
    parallel = config.map_parallelism or tf.data.AUTOTUNE
    augment = config.augment
    ds = split.records(context, config.seed, shuffle=config.training and not cached, targets=config.targets)
    checks = [validate.check_encoded] if "encoded" in ds.element_spec else []
    keep = _keep(*config.output_keys)
    if config.kind == "classification":
        if config.training and not cached:  # random-resized crop fused with decoding
            fixed, random = [], [*checks, decode.decode_random_crop(config.image_size, augment.crop_scale)]
        else:  # the deterministic part (cacheable), then plain random crops of the cached size
            fixed = [*checks, decode.decode_resize(config.cache_size)]
            random = [decode.random_crop(config.image_size)] if config.training else []
        random += augmentation.classification_example_steps(augment) if config.training else []
    else:
        # every example a mosaic tile: letterbox (and decode) at half size, tiles join without resampling
        tiles_only = config.training and config.kind == "detection" and augment.mosaic >= 1.0
        fit = config.image_size // 2 if tiles_only else config.image_size
        fixed = [*checks, decode.decode_for_size(fit, config.mask_classes, config.ignore_value),
                 spatial.letterbox(fit, config.ignore_value)]
        random = []
    if fixed:
        ds = ds.map(_compose(*fixed, keep), num_parallel_calls=parallel)
        ds = _cache(ds, config, context) if cached else ds
    if config.training:
        if cached:
            ds = shuffle_share(ds, len(split), config.cache_size ** 2 * 3, context, config.seed)
        ds = _seeded(ds.repeat(), config, context)
        ds = ds.map(_compose(*random, _keep(*config.output_keys, "seed")), num_parallel_calls=parallel)
        # Mosaic draws its tiles from four batches at once, then splits them: no example twice in a batch.
        group = 4 if config.kind == "detection" and augment.mosaic else 1
        ds = ds.batch(group * batch_size, drop_remainder=True, num_parallel_calls=parallel)
        ds = ds.map(augmentation.batch_step(config.kind, augment, config.image_size, config.ignore_value),
                    num_parallel_calls=parallel)
        ds = ds.rebatch(batch_size, drop_remainder=True) if group > 1 else ds
    else:
        ds = _pad_to_full_batches(ds, len(split), config, context)
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=parallel)
    if to_model_io is not None:
        ds = ds.map(to_model_io)
    if on_ready is not None:
        ds = ds.map(_calling(on_ready))
    if config.prefetch_batches:
        ds = ds.prefetch(tf.data.AUTOTUNE if config.prefetch_batches < 0 else config.prefetch_batches)
    return ds.with_options(dataset_options(config.deterministic, prefetch=config.prefetch_batches != 0))


def _calling(function: Callable[[], None]) -> Callable:
    """A map function passing elements through unchanged once `function` has run (a Python call)."""

    def apply(*element):
        done = tf.py_function(lambda: function() or 0, [], tf.int32)
        with tf.control_dependencies([done]):
            element = tf.nest.map_structure(tf.identity, element)
        return element if len(element) > 1 else element[0]

    return apply


def _keep(*keys: str) -> Callable[[dict], dict]:
    return lambda example: {k: example[k] for k in keys}


def eval_steps(num_examples: int, global_batch_size: int) -> int:
    """Number of (padded, full) global batches one evaluation pass yields."""
    return -(-num_examples // global_batch_size)


def _pad_to_full_batches(ds: tf.data.Dataset, num_examples: int, config: PipelineConfig,
                         context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Appends zero-weight examples so this pipeline's share fills its batches exactly."""
    pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
    padded_total = eval_steps(num_examples, config.global_batch_size) * config.global_batch_size
    shard_size = len(range(pipeline_id, num_examples, pipelines))
    pad = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in ds.element_spec.items()}
    if "classes" in pad:
        pad["classes"] -= 1  # no boxes
    if "mask" in pad:
        pad["mask"] += config.ignore_value
    pad["weight"] = tf.constant(0.0, tf.float32)
    ds = ds.map(lambda example: {**example, "weight": tf.constant(1.0, tf.float32)})
    return ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padded_total // pipelines - shard_size))


def make_input_fn(split: Split, config: PipelineConfig, to_model_io: Callable[[dict], tuple] | None = None,
                  on_ready: Callable[[], None] | None = None) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The per-input-pipeline dataset function for `strategy.distribute_datasets_from_function`."""
    return lambda context: build_dataset(split, config, context, to_model_io, on_ready)
