"""`--mode=predict` throughput: the engine's prediction path against a per-image `model.predict` loop, on the
same files and the same model, in one run (issue 15).

    python benchmarks/predict.py                                   # detection, yolov8_n at 320 px
    python benchmarks/predict.py --task=classification --image_size=64
    python benchmarks/predict.py --model_dir=RUN                   # a trained run at its own input size

Both sides start from the file paths and end with each image's finished prediction in its original pixels:

  engine  `engine.predict.predict_files(serving, KerasRunner(serving), paths, --batch_size)` consumed fully:
          a parallel, deterministic tf.data map of read_file + the task's preprocessing (`Serving.preprocess`:
          decode, resize or letterbox), batched and prefetched; per batch the task's core (`serving_core`: the
          model + softmax, or YOLOv8's box decoding) in a tf.function and the task's finishing
          (`serving_finish`: top-k, the mask at the original size, or NMS + boxes in original pixels) in a
          tf.function. The drawing and writing of `write_outputs` is not timed.
  loop    what a tutorial does, one file at a time, eagerly: tf.io.read_file, `Serving.preprocess` (the same
          decode and resize or letterbox), `model.predict(image[None], verbose=0)`, then finishing:
          classification and segmentation softmax the logits and call `Serving.finish` (eager); for detection,
          keras-cv YOLOv8's `model.predict` already decodes the boxes and runs the same NMS layer, so only
          the boxes are mapped back to original pixels (`spatial.unletterbox_boxes`, as `serving_finish` does).

Both sides first run once on --batch_size + 1 files (tracing the engine's core and finishing for both batch
shapes, and `model.predict`'s function), then alternate --repeats times on all files (so drift of the
machine hits both alike). Reported: the
median images/s of each side, the ratio engine/loop, and how closely the two sides' predictions of the first
round agree (the task's own `agreement`, as export parity checks use).

Images: --images (a folder), else the BCCD photos (../shared/data/bccd/BCCD/JPEGImages beside the checkout,
640x480 JPEGs) if present, else 200 generated shapes JPEGs (256 px) in a temporary folder; at most --limit.
Model: --model_dir's trained model, else an untrained --task model with 10 classes (speed does not depend
on training).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout: engine/, datasets/, models/

from engine import quiet  # noqa: E402

if TYPE_CHECKING:
    from engine.runners import Runner
    from engine.serving import Serving
    from engine.tasks.base import Task

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "detection", ["classification", "detection", "segmentation"],
                  "Task of the untrained model (ignored with --model_dir).")
flags.DEFINE_string("model", "", "Model of the untrained --task model (default: the task's default model).")
flags.DEFINE_string("model_dir", "", "A run directory: its trained model (best.keras) at its own input size.")
flags.DEFINE_string("images", "", "Folder of images (default: the BCCD photos if present, else generated).")
flags.DEFINE_integer("image_size", None, "Input size of the untrained model (default: detection 320, "
                     "classification 64, segmentation 256).")
flags.DEFINE_integer("batch_size", 32, "The engine's batch size.")
flags.DEFINE_integer("repeats", 3, "Timed rounds; each times both sides once (the median is reported).")
flags.DEFINE_integer("limit", 200, "At most this many files.")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")

BCCD = os.path.join(os.path.dirname(ROOT), "shared", "data", "bccd", "BCCD", "JPEGImages")
DEFAULT_SIZES = {"classification": 64, "detection": 320, "segmentation": 256}
UNTRAINED_CLASSES = [f"class_{i}" for i in range(10)]


def open_model() -> tuple[Serving, str]:
    """The Serving (task + model) of --model_dir, else of an untrained --task model, and its description."""
    from engine import run_dir, tasks
    from engine.config import Config
    from engine.serving import Serving

    if FLAGS.model_dir:
        task, model, weights = run_dir.trained_model(FLAGS.model_dir)
        described = weights
    else:
        config = Config(task=FLAGS.task, model=FLAGS.model or None,
                        image_size=FLAGS.image_size or DEFAULT_SIZES[FLAGS.task])
        task = tasks.build(config, UNTRAINED_CLASSES)
        model, described = task.build_model(), "untrained"
    return Serving(task, model), described


def image_files(scratch: str) -> tuple[list[str], str]:
    """At most --limit image paths and where they come from (generating shapes JPEGs into `scratch` if
    neither --images nor the BCCD photos are there)."""
    from datasets.sources import shapes
    from datasets.sources.base import list_images

    folder = FLAGS.images or (BCCD if os.path.isdir(BCCD) else "")
    if not folder:
        folder = shapes.generate(os.path.join(scratch, "shapes"), num_train=200, num_val=8, image_size=256, seed=0)
    paths = list_images(folder)[:FLAGS.limit]
    if not paths:
        raise app.UsageError(f"no image files in {folder}")
    return paths, folder


def run_engine(serving: Serving, runner: Runner, paths: list[str]) -> tuple[float, list[dict]]:
    """Seconds to consume `predict_files` on `paths`, and the predictions in order."""
    from engine.predict import predict_files

    started = time.perf_counter()
    found = [prediction for _, prediction in predict_files(serving, runner, paths, FLAGS.batch_size, bad={})]
    return time.perf_counter() - started, found


def run_loop(serving: Serving, paths: list[str]) -> tuple[float, list[dict]]:
    """Seconds for the per-image `model.predict` loop on `paths` (see the module docstring), and the
    predictions in order."""
    import tensorflow as tf

    from datasets.ops import spatial

    task, model, size = serving.task, serving.model, serving.image_size
    found = []
    started = time.perf_counter()
    for path in paths:
        image, original_size = serving.preprocess(tf.io.read_file(path), path)
        output = model.predict(image[None], verbose=0)
        if task.name == "detection":
            boxes = spatial.unletterbox_boxes(output["boxes"], original_size[None], size)
            finished = {"boxes": boxes, "scores": output["confidence"], "classes": output["classes"]}
        else:
            probabilities = tf.nn.softmax(tf.cast(output, tf.float32))
            finished = serving.finish({"probabilities": probabilities}, original_size[None])
        found.append({k: tf.convert_to_tensor(v).numpy()[0] for k, v in finished.items()})
    return time.perf_counter() - started, found


def agreement(task: Task, reference: list[dict], other: list[dict]) -> dict[str, float]:
    """The task's `agreement` of two sides' per-image predictions (masks compared at the original size)."""
    import numpy as np

    def stacked(predictions: list[dict]) -> dict:
        if task.name == "segmentation":
            masks = [p["mask"][:p["original_size"][0], :p["original_size"][1]] for p in predictions]
            height, width = max(m.shape[0] for m in masks), max(m.shape[1] for m in masks)
            return {"mask": np.stack([np.pad(m, ((0, height - m.shape[0]), (0, width - m.shape[1])),
                                             constant_values=-1) for m in masks])}
        keys = set(reference[0]) & set(other[0])
        return {k: np.stack([np.asarray(p[k]) for p in predictions]) for k in keys}

    return task.agreement(stacked(reference), stacked(other))


def main(argv: list[str]) -> None:
    """Warms both sides up, alternates them --repeats times, prints the table and writes --output."""
    del argv
    quiet.import_tensorflow_quietly()
    from engine.runners import KerasRunner

    serving, weights = open_model()
    runner = KerasRunner(serving)
    task = serving.task
    with tempfile.TemporaryDirectory() as scratch:
        paths, folder = image_files(scratch)
        warm = paths[:FLAGS.batch_size + 1]
        run_engine(serving, runner, warm)
        run_loop(serving, warm)
        seconds = {"engine": [], "loop": []}
        predictions = {}
        for _ in range(FLAGS.repeats):
            for side, measure in (("engine", lambda: run_engine(serving, runner, paths)),
                                  ("loop", lambda: run_loop(serving, paths))):
                elapsed, found = measure()
                seconds[side].append(elapsed)
                predictions.setdefault(side, found)
    rates = {side: [len(paths) / s for s in times] for side, times in seconds.items()}
    medians = {side: statistics.median(r) for side, r in rates.items()}
    ratio = medians["engine"] / medians["loop"]
    agreed = agreement(task, predictions["engine"], predictions["loop"])
    result = {"task": task.name, "model": task.config.model, "weights": weights, "image_size": serving.image_size,
              "images": len(paths), "folder": folder, "batch_size": FLAGS.batch_size, "repeats": FLAGS.repeats,
              "images_per_second": rates, "median_images_per_second": medians, "ratio_engine_to_loop": ratio,
              "agreement": agreed}
    print(f"{task.name}, {task.config.model} at {serving.image_size} px ({weights}), {len(paths)} images from "
          f"{folder}, engine batch {FLAGS.batch_size}, {FLAGS.repeats} rounds")
    print(f"{'side':16s} {'median img/s':>12s}  rounds (img/s)")
    for side, label in (("engine", "engine"), ("loop", "per-image loop")):
        print(f"{label:16s} {medians[side]:12.1f}  " + " ".join(f"{r:.1f}" for r in rates[side]))
    print(f"ratio engine/loop: {ratio:.2f}x")
    print("agreement: " + ", ".join(f"{k} {v:.4g}" for k, v in agreed.items()), flush=True)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
