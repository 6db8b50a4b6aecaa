"""Segmentation loss and metrics over packed targets.

The task packs each batch's target as float32 [b, h, w, 2]: channel 0 the class index (0 where ignored),
channel 1 the pixel's weight (0 for ignored pixels and for evaluation padding). So Keras passes one tensor
and the loss and metrics see which pixels count.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _unpack(y_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(y_true[..., 0], tf.int32), y_true[..., 1]


class SegmentationLoss(keras.losses.Loss):
    """Cross-entropy over counted pixels, per-class weighted, plus `dice_weight` x (1 - soft Dice); one value
    per example (its counted pixels' mean)."""

    def __init__(self, num_classes: int, dice_weight: float = 0.0, class_weights: list[float] | None = None,
                 name: str = "segmentation_loss"):
        super().__init__(name=name, reduction="sum_over_batch_size")
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.class_weights = tf.constant(class_weights or [1.0] * num_classes, tf.float32)

    def call(self, y_true, y_pred):
        labels, weights = _unpack(y_true)
        weights = weights * tf.gather(self.class_weights, labels)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(y_pred, tf.float32))
        counted = tf.maximum(tf.reduce_sum(weights, axis=[1, 2]), 1e-6)
        loss = tf.reduce_sum(cross_entropy * weights, axis=[1, 2]) / counted
        if self.dice_weight:
            probabilities = tf.nn.softmax(tf.cast(y_pred, tf.float32)) * weights[..., None]
            one_hot = tf.one_hot(labels, self.num_classes) * weights[..., None]
            overlap = tf.reduce_sum(probabilities * one_hot, axis=[1, 2])
            total = tf.reduce_sum(probabilities + one_hot, axis=[1, 2])
            dice = tf.reduce_mean((2 * overlap + 1.0) / (total + 1.0), axis=-1)
            loss += self.dice_weight * (1.0 - dice) * tf.cast(counted > 1e-3, tf.float32)
        return loss


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates the confusion matrix of counted pixels over all batches (and replicas); its result is
    the mean IoU over the classes that occur (in labels or predictions). `details()` gives per-class IoU
    and pixel accuracy."""

    def __init__(self, num_classes: int, class_names: list[str], name: str = "mean_iou"):
        super().__init__(name=name)
        self.num_classes = num_classes
        self.class_names = class_names
        self.total = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", dtype="float32",
                                       aggregation="sum", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, weights = _unpack(y_true)
        predictions = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        matrix = tf.math.confusion_matrix(tf.reshape(labels, [-1]), tf.reshape(predictions, [-1]),
                                          self.num_classes, weights=tf.reshape(weights, [-1]), dtype=tf.float32)
        self.total.assign_add(matrix)

    def result(self):
        return mean_iou(self.total)

    def reset_state(self):
        self.total.assign(tf.zeros_like(self.total))

    def details(self) -> dict[str, float]:
        """Per-class IoU ("iou_<class>", NaN for a class that never occurs) and pixel accuracy."""
        matrix = np.asarray(self.total.numpy(), np.float64)
        return {"pixel_accuracy": float(np.trace(matrix) / max(matrix.sum(), 1.0)),
                **{f"iou_{name}": value for name, value in zip(self.class_names, per_class_iou(matrix))}}


def per_class_iou(matrix: np.ndarray) -> list[float]:
    """IoU of each class from a confusion matrix (rows: labels, columns: predictions); NaN where absent."""
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    return [float(tp / u) if u > 0 else float("nan") for tp, u in zip(true_positive, union)]


def mean_iou(matrix: tf.Tensor) -> tf.Tensor:
    """Mean IoU over the classes whose union is not empty."""
    true_positive = tf.linalg.diag_part(matrix)
    union = tf.reduce_sum(matrix, axis=0) + tf.reduce_sum(matrix, axis=1) - true_positive
    present = union > 0
    return tf.reduce_mean(tf.boolean_mask(true_positive, present) / tf.boolean_mask(union, present))
