"""Train-step throughput of models under each precision and XLA setting, compared inside one run.

The data is one synthetic uint8 batch repeated from memory, so the input pipeline costs nothing and the
numbers are the step alone. Prints images/s (median of the timed epochs) and the ratio to float32 without XLA.

    python benchmarks/train_step.py --models=small_cnn:64,mobilenet_v3_small:128 --batch_size=64
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: engine/, models/

from engine import quiet  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["small_cnn:64", "resnet:64", "mobilenet_v3_small:128"], "MODEL:IMAGE_SIZE pairs.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Dtype policies to compare.")
flags.DEFINE_list("jit", ["false", "true"], "XLA settings to compare.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 20, "Steps per timed epoch.")
flags.DEFINE_integer("repeats", 3, "Timed epochs (after one warm-up epoch that includes compilation).")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def measure(model_name: str, image_size: int, precision: str, jit: bool) -> float:
    """Median images/s of `repeats` epochs of `steps` train steps on a repeated synthetic batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from engine.callbacks import ThroughputLogger
    from models import classification

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = classification.build_classifier(model_name, num_classes=10, image_size=image_size)
    model.compile(keras.optimizers.AdamW(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (FLAGS.batch_size,), dtype=np.int32)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    throughput = ThroughputLogger(FLAGS.batch_size)
    model.fit(data, epochs=1 + FLAGS.repeats, steps_per_epoch=FLAGS.steps, callbacks=[throughput], verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return statistics.median(throughput.epoch_rates[1:])


def main(argv: list[str]) -> None:
    """Measures every model x precision x XLA combination and prints the table."""
    del argv
    quiet.import_tensorflow_quietly()
    results = []
    for spec in FLAGS.models:
        name, size = spec.split(":")
        baseline = None
        for precision, jit in itertools.product(FLAGS.precisions, FLAGS.jit):
            rate = measure(name, int(size), precision, jit == "true")
            baseline = baseline or rate
            results.append({"model": name, "image_size": int(size), "precision": precision, "jit_compile": jit,
                            "images_per_second": rate, "ratio": rate / baseline})
            print(f"{name:20s} {size:>4s}px  {precision:15s} xla={jit:5s}  {rate:8.1f} img/s  {rate / baseline:5.2f}x",
                  flush=True)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
