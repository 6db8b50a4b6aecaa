"""Evaluation: `--mode=eval` (the best checkpoint of a run directory over the whole validation split), the
task's evaluations outside the compiled metrics (detection's COCO mAP), and the overlays of predictions."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import keras
import tensorflow as tf

from datasets import pipeline, preview
from engine import files, report
from engine.callbacks import metric_details
from engine.config import FlagError
from engine.job import Job


@contextlib.contextmanager
def quiet_end_of_evaluation() -> Iterator[None]:
    """Silences Keras' "input ran out of data" warning: evaluation datasets end after one pass by design
    (training datasets repeat forever, so the warning cannot hide a training problem)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def evaluators(job: Job) -> list[keras.callbacks.Callback]:
    """The task's evaluations outside the compiled metrics (detection: COCO mAP), on one input pipeline; the
    chief's write their files (detection: COCO JSON) into the run directory."""
    config = job.pipeline_config(training=False)
    return job.task.evaluators(lambda: pipeline.build_dataset(job.val_split, config),
                               job.model_dir if job.is_chief else None)


def write_overlays(job: Job, model: keras.Model, count: int = 8) -> str | None:
    """Draws the task's predictions on the first `count` validation images into RUN/overlays/val.png and
    TensorBoard (tensorboard/overlays); tasks that draw none (classification) have none."""
    if not job.task.draws_overlays:
        return None
    batch = next(pipeline.build_dataset(job.val_split, job.pipeline_config(training=False)).as_numpy_iterator())
    batch = {k: v[:count] for k, v in batch.items()}
    predicted = job.task.predict(model, batch["image"])  # (predict_on_batch under mirrored returned twice
    picture = preview.grid(job.task.draw(batch, predicted), columns=2)  # the rows: measured)
    path = os.path.join(job.model_dir, "overlays", "val.png")
    tf.io.gfile.makedirs(os.path.dirname(path))
    files.write_file(path, tf.io.encode_png(picture).numpy())
    with tf.summary.create_file_writer(os.path.join(job.model_dir, "tensorboard", "overlays")).as_default():
        tf.summary.image("val_predictions", picture[None], step=0,
                         description="Validation images: true labels left, predictions right")
    return path


def run(job: Job, model: keras.Model) -> dict:
    """`--mode=eval`: loads the best (else the latest backed-up) weights of the run directory into `model`,
    evaluates them, prints the metrics (and the per-class table) and writes eval.json, the overlays and the
    report (engine/report.py)."""
    candidates = [os.path.join(job.model_dir, "best.keras"),
                  os.path.join(job.model_dir, "backup", "latest.weights.h5")]
    weights = next((path for path in candidates if tf.io.gfile.exists(path)), None)
    if weights is None:
        raise FlagError(f"--mode=eval: no checkpoint in --model_dir={job.model_dir} "
                        f"(looked for {', '.join(candidates)})")
    model.load_weights(weights)
    with quiet_end_of_evaluation():
        metrics = model.evaluate(job.dataset(training=False), verbose=job.config.verbose, return_dict=True)
    metrics = {f"val_{k}": float(v) for k, v in metrics.items()} | {"weights": weights}
    metrics.update({f"val_{k}": v for k, v in metric_details(model).items()})
    for evaluator in evaluators(job):
        metrics.update(evaluator.evaluate(model))
        evaluator.on_train_end()  # writes what it evaluated (detection: COCO JSON)
    metrics.update(job.task.summary(metrics))
    print("[engine] eval " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if job.task.per_class:
        metric, title = job.task.per_class
        print(f"[engine] per-class {title}:\n" + "\n".join(  # classes without objects have no value
            f"    {name:24s} {value:.4f}" for name, value in metrics[f"val_per_class_{metric}"].items()
            if value is not None))
    if job.is_chief:
        write_overlays(job, model)
        metrics["report"] = report.write(job, model, weights)
        files.write_json(os.path.join(job.model_dir, "eval.json"), metrics, indent=2)
    return metrics
