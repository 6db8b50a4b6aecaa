"""Tasks: the single-replica view of a problem (model, loss, metrics, label decoding).

A task knows nothing of strategies, loops or files; the engine (`engine/train.py`) runs any task the same
way. Segmentation and detection join `TASKS` with their own classes.
"""

from __future__ import annotations

import keras

from engine.config import FlagError
import tensorflow as tf

from datasets.sources import Source
from models import classification


class ClassificationTask:
    """Image-level labels, softmax cross-entropy, accuracy."""

    name = "classification"
    best_metric = "val_accuracy"  # the validation metric that picks the best checkpoint (higher is better)

    def __init__(self, source: Source):
        self.class_names = source.class_names
        self.num_classes = source.num_classes

    def build_model(self, model_name: str, image_size: int, weights: str | None = None) -> keras.Model:
        """The classifier `model_name` with one logit per class."""
        return classification.build_classifier(model_name, self.num_classes, image_size, weights or None)

    def loss(self) -> keras.losses.Loss:
        """Cross-entropy on integer labels and float32 logits, averaged over weighted (real) examples.

        Metrics are exact over padded evaluation batches; Keras averages this loss per batch, so val_loss
        weighs the last, partly padded, batch like a full one.
        """
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")

    def metrics(self) -> list[keras.metrics.Metric]:
        """Top-1 accuracy, and top-5 when there are more than 10 classes (compiled as weighted metrics)."""
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.num_classes > 10:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        return metrics

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """Maps a pipeline batch to what `Model.fit` consumes: (inputs, targets[, sample weights])."""
        if "weight" in batch:  # evaluation batches: padding examples weigh 0
            return batch["image"], batch["label"], batch["weight"]
        return batch["image"], batch["label"]


TASKS = {"classification": ClassificationTask}


def make_task(name: str, source: Source) -> ClassificationTask:
    """The task `name` for the classes of `source`."""
    if name not in TASKS:
        raise FlagError(f"--task={name} is unknown; choose one of {', '.join(TASKS)}")
    return TASKS[name](source)
