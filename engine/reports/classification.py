"""The classification report over the whole validation split: confusion matrices (counts, and normalised by true
class), per-class precision / recall / F1 / support with macro and weighted averages (printed, per_class.csv,
the returned numbers), accuracy, top-5 accuracy, the most confused pairs, and a grid of the most confidently
wrong images (mistakes.png).

`scores` is the arithmetic alone (numpy, testable by hand); `write` runs the model over the evaluation batches
(padding examples, "weight" 0, left out) and writes the files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from datasets import drawing, preview
from engine import files
from engine.reports import plots

TOP_K = 5  # top-k accuracy is reported when there are more than this many classes
MOST_CONFUSED = 10  # pairs kept in the numbers (the printed line names the first 5)
MISTAKES = 16  # most confidently wrong images drawn
MISTAKE_CELL = 192  # smaller images are enlarged (pixel repetition) to at least this many pixels


@dataclasses.dataclass(frozen=True)
class Scores:
    """The numbers of a classification report; arrays are indexed by class."""

    confusion: np.ndarray  # int64 [C, C], rows true, columns predicted
    normalised: np.ndarray  # float64 [C, C], each row divided by its sum (rows without examples stay 0)
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # int64: true examples per class
    accuracy: float
    top5_accuracy: float | None  # None with 5 classes or fewer
    macro: dict[str, float]  # precision, recall, f1 over the classes present in the labels
    weighted: dict[str, float]  # weighted by support
    most_confused: list[tuple[int, int, int]]  # (true, predicted, count), off-diagonal, largest first


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape, np.float64), where=denominator > 0)


def scores(labels: np.ndarray, ranked: np.ndarray, num_classes: int) -> Scores:
    """The report's numbers from true `labels` [N] and `ranked` [N, k] (each row's classes by decreasing
    probability, column 0 the prediction; k >= 5 for top-5 accuracy when num_classes > 5).

    Conventions: the precision of a class never predicted is 0 (scikit-learn's zero_division=0); the recall of a
    class absent from the labels is 0, its support 0, and it is left out of the macro average (its weight in the
    weighted average is its support, 0); F1 is 0 where precision + recall is 0; a row of the normalised matrix
    without examples stays all zeros. Most confused: off-diagonal cells with a count, largest first, ties by
    (true, predicted), at most MOST_CONFUSED.
    """
    labels, ranked = np.asarray(labels, np.int64), np.asarray(ranked, np.int64)
    if not len(labels):
        raise ValueError("a classification report needs at least one example")
    if num_classes > TOP_K and ranked.shape[1] < TOP_K:
        raise ValueError(f"top-{TOP_K} accuracy of {num_classes} classes needs {TOP_K} ranked classes per example")
    predicted = ranked[:, 0]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support, hits = confusion.sum(axis=1), np.diag(confusion)
    precision, recall = _ratio(hits, confusion.sum(axis=0)), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    per_class = {"precision": precision, "recall": recall, "f1": f1}
    top5 = float(np.mean(np.any(ranked[:, :TOP_K] == labels[:, None], axis=1))) if num_classes > TOP_K else None
    return Scores(
        confusion=confusion, normalised=plots.row_normalised(confusion),
        precision=precision, recall=recall, f1=f1, support=support,
        accuracy=float(hits.sum() / len(labels)), top5_accuracy=top5,
        macro={name: float(np.mean(values[present])) for name, values in per_class.items()},
        weighted={name: float(np.average(values, weights=support)) for name, values in per_class.items()},
        most_confused=_most_confused(confusion))


def _most_confused(confusion: np.ndarray) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the off-diagonal cells with a count, largest first, ties by position."""
    off = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    cells = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.nonzero(off))]
    return sorted(cells, key=lambda cell: (-cell[2], cell[0], cell[1]))[:MOST_CONFUSED]


def as_json(result: Scores, class_names: Sequence[str]) -> dict:
    """`result` as JSON-able numbers keyed by class name."""
    return {
        "examples": int(result.support.sum()),
        "accuracy": result.accuracy,
        **({"top5_accuracy": result.top5_accuracy} if result.top5_accuracy is not None else {}),
        "per_class": {name: {"precision": float(result.precision[i]), "recall": float(result.recall[i]),
                             "f1": float(result.f1[i]), "support": int(result.support[i])}
                      for i, name in enumerate(class_names)},
        "macro_avg": result.macro,
        "weighted_avg": result.weighted,
        "most_confused": [{"true": class_names[t], "predicted": class_names[p], "count": count}
                          for t, p, count in result.most_confused],
        "confusion_matrix": result.confusion.tolist(),
    }


class Mistakes:
    """The most confidently wrong examples seen so far (at most `keep`), without holding any other image."""

    def __init__(self, keep: int = MISTAKES):
        self.keep = keep
        self.images = self.labels = self.predicted = self.confidence = None  # arrays once a mistake is seen

    def add(self, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray) -> None:
        """Considers a batch's examples; keeps the wrong ones of highest confidence."""
        wrong = labels != predicted
        if not wrong.any():
            return
        new = (images[wrong], labels[wrong], predicted[wrong], confidence[wrong])
        kept = (self.images, self.labels, self.predicted, self.confidence)
        joined = new if self.images is None else tuple(np.concatenate(pair) for pair in zip(kept, new))
        order = np.argsort(-joined[3], kind="stable")[:self.keep]
        self.images, self.labels, self.predicted, self.confidence = (array[order] for array in joined)


def _predict(model: keras.Model, dataset: tf.data.Dataset, k: int) -> tuple[np.ndarray, np.ndarray, Mistakes]:
    """Labels [N], top-k classes [N, k] and the most confidently wrong images of the dataset's real examples."""
    @tf.function(reduce_retracing=True)
    def top(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        return tf.math.top_k(probabilities, k=k)

    labels, ranked, mistakes = [], [], Mistakes()
    for batch in dataset:
        real = batch["weight"].numpy() > 0
        confidence, classes = (t.numpy()[real] for t in top(batch["image"]))
        batch_labels = batch["label"].numpy()[real].astype(np.int64)
        labels.append(batch_labels)
        ranked.append(classes)
        mistakes.add(batch["image"].numpy()[real], batch_labels, classes[:, 0].astype(np.int64), confidence[:, 0])
    return np.concatenate(labels), np.concatenate(ranked), mistakes


def _mistakes_picture(mistakes: Mistakes, class_names: Sequence[str]) -> np.ndarray:
    """The wrong images in a grid, each enlarged to at least MISTAKE_CELL pixels and captioned with its true and
    predicted class and the prediction's confidence."""
    if mistakes.images is None:
        return drawing.caption(np.full((1, 320, 3), 255, np.uint8), ["no misclassified validation images"])
    factor = max(1, -(-MISTAKE_CELL // mistakes.images.shape[1]))
    cells = [drawing.caption(image.repeat(factor, axis=0).repeat(factor, axis=1),
                             [f"true: {class_names[label]}", f"predicted: {class_names[predicted]} {confidence:.2f}"])
             for image, label, predicted, confidence
             in zip(mistakes.images, mistakes.labels, mistakes.predicted, mistakes.confidence)]
    height, width = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    padded = np.full((len(cells), height, width, 3), 255, np.uint8)
    for cell, out in zip(cells, padded):
        out[:cell.shape[0], :cell.shape[1]] = cell
    return preview.grid(padded, columns=min(4, len(cells)), gap=6)


def _write_csv(result: Scores, class_names: Sequence[str], path: str) -> None:
    """per_class.csv: class, precision, recall, f1, support, then the macro and weighted averages."""
    total = int(result.support.sum())
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for i, name in enumerate(class_names):
        writer.writerow([name, *(f"{v:.4f}" for v in (result.precision[i], result.recall[i], result.f1[i])),
                         int(result.support[i])])
    for name, average in (("macro avg", result.macro), ("weighted avg", result.weighted)):
        writer.writerow([name, *(f"{average[key]:.4f}" for key in ("precision", "recall", "f1")), total])
    files.write_file(path, text.getvalue())


def table(result: Scores, class_names: Sequence[str]) -> str:
    """The per-class table in the layout of scikit-learn's classification_report, with accuracy, top-5 accuracy,
    the averages, the classes absent from the labels and the most confused pairs."""
    width = max(len("top-5 accuracy"), *(len(name) for name in class_names))
    total = int(result.support.sum())

    def row(name: str, values: Sequence[float | None], support: int) -> str:
        return f"{name:>{width}} " + "".join(" " * 10 if v is None else f"{v:>10.4f}" for v in values) + \
            f"{support:>10d}"

    lines = [f"{'':>{width}} {'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    lines += [row(name, (result.precision[i], result.recall[i], result.f1[i]), int(result.support[i]))
              for i, name in enumerate(class_names)]
    lines += ["", row("accuracy", (None, None, result.accuracy), total)]
    if result.top5_accuracy is not None:
        lines.append(row("top-5 accuracy", (None, None, result.top5_accuracy), total))
    lines += [row(name, (average["precision"], average["recall"], average["f1"]), total)
              for name, average in (("macro avg", result.macro), ("weighted avg", result.weighted))]
    absent = [name for name, support in zip(class_names, result.support) if not support]
    if absent:
        lines.append(f"absent from the labels (left out of the macro avg): {', '.join(absent)}")
    if result.most_confused:
        lines.append("most confused (true -> predicted: count): " + ", ".join(
            f"{class_names[t]} -> {class_names[p]}: {count}" for t, p, count in result.most_confused[:5]))
    return "\n".join(lines)


def write(model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str], folder: str) -> dict:
    """Runs `model` (logits) over `dataset` (evaluation batches, "weight" 0 for padding) and writes
    confusion_matrix.png, confusion_matrix_normalized.png, per_class.csv and mistakes.png into `folder`; prints
    the per-class table; returns the numbers (`as_json`)."""
    names = list(class_names)
    labels, ranked, mistakes = _predict(model, dataset, min(TOP_K, len(names)))
    result = scores(labels, ranked, len(names))
    count = len(labels)
    plots.save(plots.confusion_matrix(result.confusion, names, names, f"Confusion matrix ({count} validation "
                                      "images)", normalised=False), os.path.join(folder, "confusion_matrix.png"))
    plots.save(plots.confusion_matrix(result.normalised, names, names, "Confusion matrix normalised by true "
                                      "class (recall on the diagonal)", normalised=True),
               os.path.join(folder, "confusion_matrix_normalized.png"))
    _write_csv(result, names, os.path.join(folder, "per_class.csv"))
    picture = _mistakes_picture(mistakes, names)
    files.write_file(os.path.join(folder, "mistakes.png"), tf.io.encode_png(picture).numpy())
    print(f"[report] classification of {count} validation images\n{table(result, names)}", flush=True)
    return as_json(result, names)
