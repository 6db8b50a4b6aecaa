"""The evaluation report: after training (train_and_eval, the best checkpoint) and with `--mode=eval`, the
task's report over the whole validation split (`Task.report`: plots, tables, numbers) and the training
curves (results.png from history.csv) in RUN/report/, its numbers in report/report.json (and eval.json),
and every plot as a TensorBoard image (tensorboard/report).

The report runs the model on the chief, outside the distribution strategy, over one input pipeline of the
whole split with padding examples weighted 0: the same numbers under every strategy.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from datasets import pipeline
from engine import files
from engine.job import Job
from engine.reports import curves


def write(job: Job, model: keras.Model, weights: str) -> dict:
    """Writes RUN/report/ for `model` (holding the `weights` named in report.json); returns its numbers."""
    folder = os.path.join(job.model_dir, "report")
    tf.io.gfile.makedirs(folder)
    dataset = pipeline.build_dataset(job.val_split, job.pipeline_config(training=False))
    numbers = job.task.report(model, dataset, folder)
    history = os.path.join(job.model_dir, "history.csv")
    if tf.io.gfile.exists(history):
        curves.write(history, os.path.join(folder, "results.png"))
    files.write_json(os.path.join(folder, "report.json"), {"weights": weights, **numbers}, indent=2)
    pictures = _to_tensorboard(folder, os.path.join(job.model_dir, "tensorboard", "report"))
    print(f"[report] {folder}: {', '.join(os.path.basename(p) for p in pictures)}", flush=True)
    return numbers


def _to_tensorboard(folder: str, logdir: str) -> list[str]:
    """Every PNG of `folder` as a TensorBoard image named after its file; returns their paths."""
    pictures = sorted(tf.io.gfile.glob(os.path.join(folder, "*.png")))
    with tf.summary.create_file_writer(logdir).as_default():
        for path in pictures:
            image = tf.io.decode_png(tf.io.read_file(path), channels=3)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None], step=0)
    return pictures
