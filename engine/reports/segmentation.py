"""The segmentation report: the pixel confusion matrix of the whole validation split, exact (int64 counts of
the counted pixels: not `ignore_value`, not in zero-weight padding examples), drawn normalised by true class,
and the per-class IoU as bars; printed with the most confused class pairs."""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from engine.reports import plots
from engine.segmentation_metrics import per_class_iou

CONFUSED_PAIRS = 5  # the most confused (true, predicted) class pairs printed and returned


def confusion_matrix(model: keras.Model, dataset: tf.data.Dataset, num_classes: int, ignore_value: int
                     ) -> np.ndarray:
    """The int64 [true, predicted] pixel counts of `model` over `dataset`'s counted pixels (mask not
    `ignore_value`, example "weight" > 0)."""

    @tf.function(reduce_retracing=True)
    def counts(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        predicted = tf.argmax(model(batch["image"], training=False), axis=-1, output_type=tf.int32)
        mask = tf.cast(batch["mask"][..., 0], tf.int32)
        counted = mask != ignore_value
        if "weight" in batch:
            counted &= (batch["weight"] > 0)[:, None, None]
        return tf.math.confusion_matrix(tf.boolean_mask(mask, counted), tf.boolean_mask(predicted, counted),
                                        num_classes, dtype=tf.int64)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    for batch in dataset:
        matrix += counts(batch).numpy()
    return matrix


def most_confused(matrix: np.ndarray, class_names: Sequence[str], count: int = CONFUSED_PAIRS) -> list[dict]:
    """The `count` off-diagonal cells largest as a share of their true class's pixels (the normalised matrix's
    largest errors): true and predicted class, pixels and that share."""
    shares = plots.row_normalised(matrix)
    np.fill_diagonal(shares, 0)
    order = np.argsort(-shares, axis=None, kind="stable")[:count]
    return [{"true": class_names[t], "predicted": class_names[p], "pixels": int(matrix[t, p]),
             "share_of_true": float(shares[t, p])}
            for t, p in zip(*np.unravel_index(order, shares.shape)) if shares[t, p] > 0]


def write(model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str], folder: str,
          ignore_value: int) -> dict:
    """Writes confusion_matrix_normalized.png and per_class_iou.png into `folder`, prints per-class IoU and the
    most confused pairs; returns mean IoU (over the classes that occur), per-class IoU (None: never occurs),
    pixel accuracy, the most confused pairs and the confusion matrix."""
    matrix = confusion_matrix(model, dataset, len(class_names), ignore_value)
    iou = per_class_iou(matrix)
    occurring = [value for value in iou if not np.isnan(value)]
    mean_iou = float(np.mean(occurring)) if occurring else float("nan")
    counted = int(matrix.sum())
    accuracy = float(np.trace(matrix) / max(counted, 1))
    plots.save(plots.confusion_matrix(plots.row_normalised(matrix), class_names, class_names,
                                      f"Pixel confusion matrix, rows normalised by true class ({counted:,} pixels)",
                                      normalised=True),
               os.path.join(folder, "confusion_matrix_normalized.png"))
    plots.save(plots.bars(iou, class_names, f"Per-class IoU (mean {mean_iou:.3f} over {len(occurring)} classes)",
                          "IoU"),
               os.path.join(folder, "per_class_iou.png"))
    confused = most_confused(matrix, class_names)
    width = max(len(name) for name in class_names)
    print(f"[report] segmentation over {counted:,} pixels: mean IoU {mean_iou:.4f}, pixel accuracy "
          f"{accuracy:.4f}; per-class IoU:\n" + "\n".join(
              f"    {name:{width}s} {'n/a' if np.isnan(value) else f'{value:.4f}'}"
              for name, value in zip(class_names, iou)), flush=True)
    print("[report] most confused (true -> predicted, share of the true class's pixels):\n" + "\n".join(
        f"    {pair['true']} -> {pair['predicted']}: {pair['share_of_true']:.1%} ({pair['pixels']:,} px)"
        for pair in confused), flush=True)
    return {"mean_iou": mean_iou,
            "per_class_iou": {name: None if np.isnan(value) else value for name, value in zip(class_names, iou)},
            "pixel_accuracy": accuracy,
            "most_confused": confused,
            "confusion_matrix": matrix.tolist()}
