"""The streaming pipeline: sharding, static shapes, seeded order, uint8 images."""

import collections
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets import budget, pipeline
from datasets.ops import decode
from datasets.recipes import ClassificationRecipe
from datasets.sources import shapes
from engine.config import Config, FlagError


def _examples(root):
    return shapes.shapes_source(root).splits


def _paths_seen(examples, config, num_pipelines):
    """Decoded label + image checksum of every element each input pipeline yields in one pass."""
    seen = collections.Counter()
    for pipeline_id in range(num_pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=num_pipelines)
        steps = pipeline.eval_steps(len(examples), config.global_batch_size)
        for batch in pipeline.build_dataset(examples, config, context).take(steps):
            for image, label, weight in zip(batch["image"].numpy(), batch["label"].numpy(), batch["weight"].numpy()):
                if weight:
                    seen[(int(label), int(image.astype(np.int64).sum()))] += 1
    return seen


def test_two_input_pipelines_see_every_example_exactly_once(tiny_shapes):
    val = _examples(tiny_shapes)["val"]
    config = pipeline.PipelineConfig(ClassificationRecipe(32), global_batch_size=8, training=False)
    one = _paths_seen(val, config, num_pipelines=1)
    two = _paths_seen(val, config, num_pipelines=2)
    assert sum(one.values()) == len(val)
    assert two == one


def test_training_batches_have_static_shapes_and_uint8_pixels(tiny_shapes):
    train = _examples(tiny_shapes)["train"]
    ds = pipeline.build_dataset(train, pipeline.PipelineConfig(ClassificationRecipe(40), 16, training=True))
    assert ds.element_spec["image"].shape == (16, 40, 40, 3)
    assert ds.element_spec["image"].dtype == tf.uint8
    assert ds.element_spec["label"].shape == (16,)
    batch = next(iter(ds))
    assert batch["image"].numpy().max() > 100, "pixels are in [0, 255]"


def test_labels_stay_with_their_images_through_reading_and_batching(tiny_shapes):
    train = _examples(tiny_shapes)["train"]
    expected = {}
    for path, label in zip(train.paths, train.labels):
        image = decode.decode_resize(48)({"encoded": tf.io.read_file(path)})["image"].numpy()
        expected[image.tobytes()] = label
    config = pipeline.PipelineConfig(ClassificationRecipe(48), global_batch_size=32, training=False)
    batches = pipeline.build_dataset(train, config).take(pipeline.eval_steps(len(train), 32))
    pairs = [(image.tobytes(), int(label)) for batch in batches
             for image, label, weight in zip(batch["image"].numpy(), batch["label"].numpy(), batch["weight"].numpy())
             if weight]
    assert len(pairs) == len(train)
    assert all(expected[image] == label for image, label in pairs)


def test_same_seed_same_batches_different_seed_different_batches(tiny_shapes):
    train = _examples(tiny_shapes)["train"]

    def first_batches(seed):
        config = pipeline.PipelineConfig(ClassificationRecipe(32), global_batch_size=8, training=True, seed=seed,
                                         deterministic=True)
        return [b["image"].numpy() for b in pipeline.build_dataset(train, config).take(3)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_cache_sits_before_augmentation_and_keeps_eval_exact(tiny_shapes, tmp_path):
    splits = _examples(tiny_shapes)
    config = pipeline.PipelineConfig(ClassificationRecipe(32), global_batch_size=8, training=True, seed=3,
                                     cache=f"disk:{tmp_path}", deterministic=True)
    ds = pipeline.build_dataset(splits["train"], config)
    assert ds.element_spec["image"].shape == (8, 32, 32, 3)
    per_epoch = len(splits["train"]) // 8
    first, second = [np.concatenate([b["image"].numpy() for b in epoch]) for epoch in
                     (ds.take(per_epoch), ds.skip(per_epoch).take(per_epoch))]
    assert os.listdir(tmp_path), "the disk cache was written"
    assert not np.array_equal(first, second), "augmentation after the cache gives new crops every epoch"

    plain = pipeline.PipelineConfig(ClassificationRecipe(32), global_batch_size=8, training=False, deterministic=True)
    cached = dataclasses.replace(plain, cache="memory")
    steps = pipeline.eval_steps(len(splits["val"]), 8)
    for a, b in zip(pipeline.build_dataset(splits["val"], plain).take(steps),
                    pipeline.build_dataset(splits["val"], cached).take(steps)):
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())
        assert np.array_equal(a["label"].numpy(), b["label"].numpy())


def test_training_reads_its_cache_as_it_fills_then_every_epoch_from_it(tiny_shapes, tmp_path):
    """The first batch needs only its own files (no wait for the whole split to decode into the cache); epoch 0
    is the order of the split's own first epoch; later epochs come from the cache (the files gone), each with
    every example once, in a new order."""
    from datasets.recipes import Augment
    from datasets.sources.base import Examples

    source = _examples(tiny_shapes)["train"]
    copies = []
    for index, path in enumerate(source.paths):
        copies.append(str(tmp_path / f"{index}.jpg"))
        tf.io.gfile.copy(path, copies[-1])
    train = Examples(copies, source.labels)
    context = tf.distribute.InputContext()
    order = [r["id"].decode() for r in train.first_epoch(context, seed=4)[0].as_numpy_iterator()]
    assert order == [r["id"].decode() for r in train.epochs(context, seed=4)[0].take(len(train)).as_numpy_iterator()]
    config = pipeline.PipelineConfig(ClassificationRecipe(32, Augment(flip=False, crop_scale=(1.0, 1.0))),
                                     global_batch_size=8, training=True, seed=4, cache="memory", deterministic=True)
    decoded = {path: decode.decode_resize(32)({"encoded": tf.io.read_file(path)})["image"].numpy().tobytes()
               for path in copies}

    only_first_batch = Examples([path if path in order[:8] else str(tmp_path / "missing.jpg") for path in copies],
                                train.labels)
    first = next(iter(pipeline.build_dataset(only_first_batch, config)))["image"].numpy()
    assert [image.tobytes() for image in first] == [decoded[path] for path in order[:8]]

    per_epoch = len(train) // 8
    batches = iter(pipeline.build_dataset(train, config))
    epochs = [[image.tobytes() for _ in range(per_epoch) for image in next(batches)["image"].numpy()]]
    for path in copies:
        os.remove(path)
    epochs += [[image.tobytes() for _ in range(per_epoch) for image in next(batches)["image"].numpy()]
               for _ in range(2)]
    assert epochs[0] == [decoded[path] for path in order]
    assert all(sorted(epoch) == sorted(decoded.values()) for epoch in epochs)
    assert epochs[1] != epochs[0] and epochs[2] != epochs[1], "each epoch in its own order"


def _large_jpeg() -> tf.Tensor:
    """A 1600x1200 photo-like JPEG: smooth colour fields with fine texture."""
    rng = np.random.default_rng(0)
    coarse = tf.image.resize(rng.uniform(0, 255, (30, 40, 3)), [1200, 1600]).numpy()
    return tf.io.encode_jpeg(np.clip(coarse + rng.normal(0, 12, coarse.shape), 0, 255).astype(np.uint8), quality=90)


def test_large_jpegs_decode_at_a_dct_scale_within_tolerance_of_full_scale():
    encoded = _large_jpeg()
    full = tf.io.decode_jpeg(encoded, channels=3)
    example = {"encoded": encoded, "id": tf.constant("large.jpg"), "seed": tf.constant([0, 5], tf.int64)}
    resized = decode.decode_resize(224)(example)
    exact = tf.image.resize(full, [224, 224], antialias=True).numpy()  # full scale, averaged properly
    assert resized["original_size"].numpy().tolist() == [1200, 1600]
    assert np.abs(resized["image"].numpy() - exact).mean() < 2.0
    # the same crop windows as full-scale decoding, closer to the properly averaged crop than full scale is
    scaled_windows = 0
    for seed in range(6):
        example["seed"] = tf.constant([0, seed], tf.int64)
        y, x, h, w = decode._random_crop_window(tf.constant([1200, 1600, 3]), (0.08, 1.0), example["seed"]).numpy()
        exact_crop = tf.image.resize(full[y:y + h, x:x + w], [224, 224], antialias=True).numpy()
        crop = decode.decode_random_crop(224, (0.08, 1.0))(example)["image"].numpy()
        full_crop = decode.decode_random_crop(224, (0.08, 1.0), dct_ratios=())(example)["image"].numpy()
        if min(h, w) >= 448:  # decoded at 1/2 scale or less
            scaled_windows += 1
            assert np.abs(crop - exact_crop).mean() < min(2.5, np.abs(full_crop - exact_crop).mean())
        else:
            assert np.array_equal(crop, full_crop)
    assert scaled_windows >= 2
    small = tf.io.encode_jpeg(full[:300, :300])  # shorter side under twice the output: full scale either way
    scaled_small = decode.decode_resize(224)({"encoded": small})["image"].numpy()
    assert np.array_equal(scaled_small, decode.decode_resize(224, dct_ratios=())({"encoded": small})["image"].numpy())


def test_shuffle_buffer_follows_memory_budget():
    assert budget.shuffle_buffer_size(1000, 100, budget_bytes=1 << 20) == 1000
    assert budget.shuffle_buffer_size(10**7, 150_000, budget_bytes=1 << 30) == (1 << 30) // 150_000


def test_bad_cache_flag_is_rejected():
    with pytest.raises(FlagError, match="--cache=disk: is not one of auto | none | memory | disk:PATH"):
        Config(cache="disk:")


def _parsed(ds: tf.data.Dataset, parse) -> tf.data.Dataset:
    """A split's stream as records."""
    return ds.map(parse) if parse else ds


@pytest.mark.parametrize("num_shards", [1, 4])
def test_each_source_gives_two_pipelines_disjoint_complete_epochs(tiny_shapes, tmp_path, num_shards):
    """Record streams: with 2 pipelines every example is read exactly once per epoch, by file-level sharding (4
    shards) or by example-level sharding (1 shard), shuffled (`records`) and in training's epoch stream
    (`epochs`: two epochs, each complete, in different orders that a second stream repeats)."""
    from datasets.sources import idx, tfrecord
    shapes_source = shapes.shapes_source(tiny_shapes)
    tfrecord.convert(shapes_source, str(tmp_path), num_shards=num_shards)
    arrays = idx.ArraySplit(np.zeros((10, 4, 4, 1), np.uint8), np.arange(10), "arrays")
    for split in (shapes_source.splits["train"], tfrecord.tfrecord_source(str(tmp_path)).splits["train"], arrays):
        seen, shares = collections.Counter(), []
        for pipeline_id in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
            shares.append([r["id"] for r in split.records(context, seed=5, shuffle=True).as_numpy_iterator()])
            seen.update(shares[-1])
        assert len(seen) == len(split) and set(seen.values()) == {1}
        epochs = []  # per pipeline, its first two epochs of training's stream
        for pipeline_id, share in enumerate(shares):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
            ids, again = ([r["id"] for r in _parsed(*split.epochs(context, seed=5)).take(2 * len(share))
                           .as_numpy_iterator()] for _ in range(2))
            assert ids == again, "the epoch stream is a function of (seed, epoch)"
            epochs.append((ids[:len(share)], ids[len(share):]))
            assert epochs[-1][0] != epochs[-1][1], "each epoch in its own order"
        for epoch in range(2):
            assert sorted(epochs[0][epoch] + epochs[1][epoch]) == sorted(seen)


def test_batches_are_graph_only_and_the_tf_data_service_serves_them_unchanged(tiny_shapes):
    """`batches` is the part of the pipeline that can run elsewhere: no Python call in its graph, and a local
    tf.data service (dispatcher and worker) yields exactly its batches; the client tail holds the input clock."""
    from datasets.recipes import DetectionRecipe

    val = _examples(tiny_shapes)["val"]
    config = pipeline.PipelineConfig(DetectionRecipe(32, max_boxes=4), global_batch_size=16, training=False)
    assert b"PyFunc" not in pipeline.batches(val, config)._as_serialized_graph().numpy()
    assert b"PyFunc" in pipeline.build_dataset(val, config, on_ready=lambda: None)._as_serialized_graph().numpy()
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    remote = pipeline.batches(val, config).apply(service.distribute("parallel_epochs", dispatcher.target))
    local = list(pipeline.batches(val, config).as_numpy_iterator())
    served = list(remote.as_numpy_iterator())
    assert len(served) == len(local) == 4
    for a, b in zip(local, served):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # training batches too, with the XLA-compiled colour jitter inside the served graph
    from datasets.recipes import Augment

    train = pipeline.PipelineConfig(ClassificationRecipe(16, Augment(brightness=0.3, saturation=0.3)),
                                    global_batch_size=4, training=True, deterministic=True)
    remote = pipeline.batches(val, train).apply(service.distribute("parallel_epochs", dispatcher.target))
    for a, b in zip(pipeline.batches(val, train).take(3).as_numpy_iterator(), remote.take(3).as_numpy_iterator()):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    worker.stop()
    dispatcher.stop()


@pytest.mark.parametrize("task, size", [("classification", 32), ("segmentation", 32), ("detection", 64)])
def test_every_tasks_model_inputs_have_fully_static_shapes(tiny_shapes, tmp_path, task, size):
    """What a TPU (and XLA) compiles: every tensor the model gets, in training and evaluation, has a fully known
    shape, batch dimension included, under the run's own strategy and per-replica batching."""
    from engine.config import Config
    from engine.job import prepare

    job = prepare(Config(task=task, dataset=f"shapes:{tiny_shapes}", image_size=size, batch_size=8, epochs=1,
                         strategy="one_device", mode="train", model_dir=str(tmp_path), preview_batches=0))
    for training in (True, False):
        specs = tf.nest.flatten(job.dataset(training).element_spec)
        assert specs and all(spec.shape.is_fully_defined() for spec in specs), (training, specs)
        assert all(spec.shape[0] == 8 for spec in specs), (training, specs)
