"""The tf.data service (--data_service): local dispatcher and worker servers, the training stream split into
chunks of each epoch, every example once per epoch across the workers; training through it under mirrored,
with a worker killed mid-epoch."""

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from datasets import pipeline
from datasets.recipes import Augment, ClassificationRecipe, DetectionRecipe
from datasets.sources import shapes, tfrecord
from tests.conftest import REPO, start_data_service

service = tf.data.experimental.service


@pytest.fixture
def two_workers():
    """A dispatcher and two workers in this process; yields the dispatcher's grpc:// address."""
    dispatcher = service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address)) for _ in range(2)]
    yield dispatcher.target
    for worker in workers:
        worker.stop()
    dispatcher.stop()


@pytest.mark.parametrize("kind", ["files", "tfrecord"])
def test_every_example_goes_out_once_per_epoch_across_two_workers(tiny_shapes, tmp_path, two_workers, kind):
    split = shapes.shapes_source(tiny_shapes).splits["train"]  # a chunk: 32 rows of a table, 8 an epoch
    if kind == "tfrecord":  # a chunk: one of 4 shard files
        tfrecord.convert(shapes.shapes_source(tiny_shapes), str(tmp_path), num_shards=4)
        split = tfrecord.tfrecord_source(str(tmp_path)).splits["train"]
    config = pipeline.PipelineConfig(ClassificationRecipe(32, Augment(crop_scale=(1.0, 1.0))), global_batch_size=8,
                                     training=True, data_service=two_workers)
    _, parse = split.stream(tf.distribute.InputContext(), 0, True)
    chunks = split.service_chunks(pipeline.SERVICE_CHUNK_BATCHES * 8)
    epoch_of = (lambda position: position // len(split)) if kind == "files" else (
        lambda position: (position >> 32) // chunks)
    served = pipeline._service_stream(split, config, batch_size=8).map(
        lambda element, position: ((parse(element) if parse else element)["id"], position)).apply(
        service.distribute("distributed_epoch", two_workers))
    by_epoch, seen = collections.defaultdict(collections.Counter), set()
    for example_id, position in served.take(3 * len(split)).as_numpy_iterator():
        assert position not in seen, "no position goes out twice"
        seen.add(position)
        by_epoch[epoch_of(position)][example_id.decode()] += 1
    every_id = sorted(r["id"].decode() for r in split.records(tf.distribute.InputContext(), 0, False).as_numpy_iterator())
    assert len(every_id) == len(split) == 256
    for epoch in (0, 1):  # whole epochs (the third may still be in flight on the other worker)
        assert sorted(by_epoch[epoch]) == every_id and set(by_epoch[epoch].values()) == {1}


def test_the_mirrored_training_input_through_the_service_holds_each_example_once_an_epoch(tiny_shapes, tmp_path):
    # The engine's own distributed training dataset (two replicas), through a dispatcher and one worker, which
    # serves the chunks in order: the first epoch's worth of examples is every example once, two epochs' twice.
    # An example is known by its label and pixel sum (whole images, flipped or not).
    from engine.config import Config
    from engine.job import prepare

    dispatcher = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    job = prepare(Config(dataset=f"shapes:{tiny_shapes}", strategy="mirrored", image_size=32, batch_size=16,
                         epochs=2, mode="train", model_dir=str(tmp_path), data_service=dispatcher.target))
    steps = len(job.train_split) // 16
    seen, iterator = collections.Counter(), iter(job.dataset(training=True))
    for step in range(2 * steps):
        images, labels = (job.strategy.experimental_local_results(part) for part in next(iterator))
        for replica_images, replica_labels in zip(images, labels):
            seen.update(zip(np.argmax(replica_labels, axis=-1).tolist(),
                            replica_images.numpy().astype(np.int64).sum(axis=(1, 2, 3)).tolist()))
        if step == steps - 1:
            assert len(seen) == len(job.train_split) and set(seen.values()) == {1}
    assert len(seen) == len(job.train_split) and set(seen.values()) == {2}
    del iterator  # a server stopped while a reader is still open waits for it
    worker.stop()
    dispatcher.stop()


@pytest.mark.parametrize("kind", ["files", "tfrecord"])
def test_training_batches_through_the_service_are_the_local_pipelines_kind(tiny_shapes, tmp_path, two_workers, kind):
    # image files with classification's per-batch colour jitter; TFRecord shards with detection's letterbox
    # (a deterministic step before the random ones) and Mosaic
    split = shapes.shapes_source(tiny_shapes).splits["train"]
    recipe = ClassificationRecipe(32, Augment(brightness=0.2))
    if kind == "tfrecord":
        tfrecord.convert(shapes.shapes_source(tiny_shapes), str(tmp_path), num_shards=4)
        split = tfrecord.tfrecord_source(str(tmp_path)).splits["train"]
        recipe = DetectionRecipe(64, Augment(mosaic=1.0), max_boxes=8)
    local = pipeline.PipelineConfig(recipe, global_batch_size=8, training=True)
    remote = dataclasses.replace(local, data_service=two_workers, service_job=kind)
    ds = pipeline.build_dataset(split, remote)
    assert ds.element_spec == pipeline.build_dataset(split, local).element_spec, "static shapes, same keys, types"
    batches = list(ds.take(64).as_numpy_iterator())  # two epochs of 32 batches
    assert all(batch["image"].std() > 0 for batch in batches)
    if kind == "files":
        labels = collections.Counter(int(label) for batch in batches for label in batch["label"])
        # two epochs, but for the examples of the epoch boundary still in flight (at most a chunk a worker)
        assert all(abs(labels[label] - 2 * count) <= 2 * 32 for label, count in collections.Counter(split.labels).items())
    else:
        assert all((batch["classes"] >= 0).any() for batch in batches), "every mosaic holds boxes"


@pytest.mark.slow
def test_mirrored_training_through_the_service_survives_a_worker_killed_mid_epoch(tiny_shapes, tmp_path):
    address, servers = start_data_service(workers=2)
    model_dir = str(tmp_path / "served")
    trainer = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch.py"), f"--dataset=shapes:{tiny_shapes}", "--strategy=mirrored",
         f"--data_service={address}", "--epochs=2", "--batch_size=8", "--image_size=32",
         "--checkpoint_steps=4", "--verbose=2", f"--model_dir={model_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metadata = os.path.join(model_dir, "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and trainer.poll() is None:  # until a step inside epoch 1 is backed up
        try:
            with open(metadata) as f:
                if json.load(f)["step"] > 0:
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert trainer.poll() is None, "the worker must be killed while training runs"
    servers[2].send_signal(signal.SIGKILL)
    output = trainer.communicate(timeout=600)[0]
    for server in servers[:2]:
        server.send_signal(signal.SIGTERM)
        server.wait()
    assert trainer.returncode == 0, output[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs"] == 2 and summary["replicas"] == 2 and np.isfinite(summary["loss"])
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["data_service"] == address
