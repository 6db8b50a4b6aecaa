"""Detection's evaluation report (engine/report.py) over the whole validation split, padding excluded:

- PR_curve.png: precision against recall at IoU 0.5 per class and their mean, read from pycocotools' own
  evaluation arrays (101 recall points, precision interpolated as COCO does), so the area under each curve is
  that class's AP50 and the mean's area is val_map50;
- F1_curve.png: F1 against confidence per class and over all classes pooled (COCO's matching at IoU 0.5), the
  best threshold marked: the point of val_precision and val_recall;
- confusion_matrix.png (counts) and confusion_matrix_normalized.png (by true class): true classes by predicted
  ones with a background row (false positives) and column (missed objects), at confidence 0.25 and IoU 0.45.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from engine import detection_metrics
from engine.reports import plots

CONFIDENCE = 0.25  # the confusion matrix's settings: Ultralytics' (ultralytics/utils/metrics.py ConfusionMatrix)
MATCH_IOU = 0.45
MANY_CLASSES = 10  # above this many, per-class curves are thin grey lines without legend entries
FIGURE_SIZE = (10.0, 6.0)  # inches of the curve plots, at plots.DPI
THRESHOLDS = np.linspace(0.0, 1.0, 1001)  # confidences at which the F1 curves are drawn


def confusion_matrix(truth: Sequence[dict], found: Sequence[dict], num_classes: int, confidence: float = CONFIDENCE,
                     iou: float = MATCH_IOU) -> np.ndarray:
    """Counts [C + 1, C + 1]: rows true class, columns predicted class, index C background. Per image, detections
    scoring >= `confidence` are matched one-to-one to true boxes at IoU >= `iou`, greedily by IoU (highest first)
    whatever the classes, and counted at [true, predicted]; unmatched true boxes at [class, background] (missed),
    unmatched detections at [background, class] (false positives). Ultralytics' convention: 0.25 and 0.45."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for image, detections in zip(truth, found):
        keep = np.asarray(detections["scores"], np.float64).reshape(-1) >= confidence
        _count_image(matrix, np.asarray(image["classes"], np.int64).reshape(-1),
                     np.asarray(detections["classes"], np.int64).reshape(-1)[keep],
                     detection_metrics.box_iou(image["boxes"], np.asarray(detections["boxes"]).reshape(-1, 4)[keep]),
                     iou)
    return matrix


def _count_image(matrix: np.ndarray, true_classes: np.ndarray, found_classes: np.ndarray, overlap: np.ndarray,
                 iou: float) -> None:
    """Adds one image's matches, misses and false positives to `matrix` (its last row and column background)."""
    background = matrix.shape[0] - 1
    pairs = _greedy_pairs(overlap, iou)
    for t, f in pairs:
        matrix[true_classes[t], found_classes[f]] += 1
    for t in set(range(true_classes.size)) - {t for t, _ in pairs}:
        matrix[true_classes[t], background] += 1
    for f in set(range(found_classes.size)) - {f for _, f in pairs}:
        matrix[background, found_classes[f]] += 1


def _greedy_pairs(overlap: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """(row, column) pairs of `overlap` >= `minimum`, highest first, each row and column used at most once."""
    rows, columns = np.nonzero(overlap >= minimum)
    order = np.argsort(-overlap[rows, columns], kind="stable")
    pairs, used_rows, used_columns = [], set(), set()
    for row, column in zip(rows[order].tolist(), columns[order].tolist()):
        if row not in used_rows and column not in used_columns:
            pairs.append((row, column))
            used_rows.add(row)
            used_columns.add(column)
    return pairs


def precision_at_50(evaluation, num_classes: int, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' recall points [R] and interpolated precision [K, R] at IoU 0.5 (all areas, 100 detections)
    of `detection_metrics.coco_evaluation`; rows of classes without objects NaN. Without an evaluation (no
    detections), 0 for the classes `present` (bool [K])."""
    if evaluation is None:
        recall = np.linspace(0.0, 1.0, 101)
        return recall, np.where(present[:, None], 0.0, np.nan) * np.ones((num_classes, recall.size))
    precision = evaluation.eval["precision"][0, :, :, 0, -1].T.astype(np.float64)  # [K, R]
    return np.asarray(evaluation.params.recThrs), np.where(precision < 0, np.nan, precision)


def matches_at_50(evaluation, num_classes: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per class, pycocotools' matching at IoU 0.5 (all areas) of `detection_metrics.coco_evaluation`: the
    detections' scores, whether each matched an object, and the number of objects (COCO's ignored ones left out)."""
    scores, matched = [[np.zeros(0)] for _ in range(num_classes)], [[np.zeros(0, bool)] for _ in range(num_classes)]
    objects = [0] * num_classes
    for entry in evaluation.evalImgs if evaluation is not None else []:
        if entry is None or entry["aRng"] != evaluation.params.areaRng[0]:
            continue
        k = entry["category_id"] - 1
        keep = ~np.asarray(entry["dtIgnore"][0], bool).reshape(-1)
        scores[k].append(np.asarray(entry["dtScores"], np.float64)[keep])
        matched[k].append(np.asarray(entry["dtMatches"][0]).reshape(-1)[keep] > 0)
        objects[k] += int(np.sum(np.asarray(entry["gtIgnore"]) == 0))
    return [(np.concatenate(s), np.concatenate(m), n) for s, m, n in zip(scores, matched, objects)]


def pooled(matches: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """The matches of all classes as one set: scores, matched, objects."""
    return (np.concatenate([s for s, _, _ in matches]), np.concatenate([m for _, m, _ in matches]),
            sum(n for _, _, n in matches))


def f1_curve(scores: np.ndarray, matched: np.ndarray, objects: int, thresholds: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of the detections scoring >= each of `thresholds` (no detections: all 0)."""
    order = np.argsort(scores, kind="stable")
    ascending, hits = scores[order], matched[order]
    matched_from = np.concatenate([np.cumsum(hits[::-1])[::-1], [0]])  # matches among detections i.. of ascending
    first = np.searchsorted(ascending, thresholds, side="left")
    kept, true_positives = scores.size - first, matched_from[first].astype(np.float64)
    precision = np.divide(true_positives, kept, out=np.zeros(first.shape), where=kept > 0)
    recall = true_positives / objects if objects else np.zeros(first.shape)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(first.shape),
                   where=precision + recall > 0)
    return precision, recall, f1


def best_f1(scores: np.ndarray, matched: np.ndarray, objects: int) -> dict:
    """The confidence threshold (one of `scores`; the highest of equal F1) of highest F1, with its F1, precision
    and recall."""
    if not scores.size:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "confidence": 0.0}
    thresholds = np.unique(scores)
    precision, recall, f1 = f1_curve(scores, matched, objects, thresholds)
    best = int(thresholds.size - 1 - np.argmax(f1[::-1]))
    return {"f1": float(f1[best]), "precision": float(precision[best]), "recall": float(recall[best]),
            "confidence": float(thresholds[best])}


def _class_lines(axes: plt.Axes, x: np.ndarray, curves: Sequence[np.ndarray], labels: Sequence[str]) -> None:
    """One line per class: coloured and labelled up to MANY_CLASSES classes, thin grey and unlabelled beyond
    (one legend entry counting them)."""
    many = len(curves) > MANY_CLASSES
    for k, (curve, label) in enumerate(zip(curves, labels)):
        if many:
            axes.plot(x, curve, color="0.6", linewidth=0.6, alpha=0.6,
                      label=f"{len(curves)} classes, one line each" if k == 0 else None)
        else:
            axes.plot(x, curve, color=plt.get_cmap("tab10")(k), linewidth=1.2, label=label)


def _finish(figure: plt.Figure, axes: plt.Axes, xlabel: str, ylabel: str, title: str, legend_title: str
            ) -> plt.Figure:
    """Unit square axes, labels, the legend right of the plot."""
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title=legend_title, fontsize=9, frameon=False)
    figure.tight_layout()
    return figure


def pr_figure(recall: np.ndarray, precision: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Precision against recall at IoU 0.5 per class (legend: AP50) and their mean (bold: mAP50)."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=plots.DPI)
    shown = [k for k in range(len(class_names)) if np.isfinite(precision[k]).all()]
    _class_lines(axes, recall, [precision[k] for k in shown],
                 [f"{class_names[k]} {np.mean(precision[k]):.3f}" for k in shown])
    mean = np.nanmean(precision[shown], axis=0) if shown else np.zeros_like(recall)
    axes.plot(recall, mean, color="black", linewidth=3, label=f"all classes, mAP50 {np.mean(mean):.3f}")
    return _finish(figure, axes, "recall", "precision", "precision-recall at IoU 0.5 (pycocotools)", "AP50")


def f1_figure(matches: Sequence[tuple[np.ndarray, np.ndarray, int]], class_names: Sequence[str],
              best: dict) -> plt.Figure:
    """F1 against confidence per class and over all classes pooled (bold), the `best` threshold marked."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=plots.DPI)
    shown = [k for k in range(len(class_names)) if matches[k][2]]
    curves = [f1_curve(*matches[k], THRESHOLDS)[2] for k in shown]
    labels = [f"{class_names[k]} {own['f1']:.2f} at {own['confidence']:.2f}"
              for k, own in zip(shown, (best_f1(*matches[k]) for k in shown))]
    _class_lines(axes, THRESHOLDS, curves, labels)
    thresholds = np.union1d(THRESHOLDS, [best["confidence"]])  # the curve passes through the marked best
    axes.plot(thresholds, f1_curve(*pooled(matches), thresholds)[2], color="black", linewidth=3,
              label=f"all classes F1 {best['f1']:.2f} at {best['confidence']:.2f}")
    axes.axvline(best["confidence"], color="black", linestyle="--", linewidth=1)
    axes.plot([best["confidence"]], [best["f1"]], "o", color="black")
    title = (f"F1 against confidence at IoU 0.5: best {best['f1']:.2f} at {best['confidence']:.3f} "
             f"(precision {best['precision']:.2f}, recall {best['recall']:.2f})")
    return _finish(figure, axes, "confidence", "F1", title, "best F1 at confidence")


def confusion_figures(matrix: np.ndarray, class_names: Sequence[str], confidence: float, iou: float
                      ) -> tuple[plt.Figure, plt.Figure]:
    """The confusion matrix in counts and normalised by true class (rows)."""
    names = [*class_names, "background"]
    settings = f"confidence >= {confidence:g}, IoU >= {iou:g}\nbackground: false positives (row), missed (column)"
    counts = plots.confusion_matrix(matrix, names, names, f"detection confusion matrix (counts)\n{settings}", False)
    normalised = plots.confusion_matrix(plots.row_normalised(matrix), names, names,
                                        f"detection confusion matrix, normalised by row\n{settings}", True)
    return counts, normalised


def _largest_confusions(matrix: np.ndarray, class_names: Sequence[str], count: int = 5) -> list[str]:
    """The `count` largest off-diagonal cells, worded: "RBC missed 12", "false WBC 3", "RBC as WBC 2"."""
    background = len(class_names)
    cells = [(matrix[t, p], t, p) for t in range(background + 1) for p in range(background + 1)
             if t != p and matrix[t, p] > 0]
    words = []
    for value, t, p in sorted(cells, key=lambda cell: -cell[0])[:count]:
        if p == background:
            words.append(f"{class_names[t]} missed {value}")
        elif t == background:
            words.append(f"false {class_names[p]} {value}")
        else:
            words.append(f"{class_names[t]} as {class_names[p]} {value}")
    return words


def _ap_summary(per_class: dict[str, float]) -> str:
    """Every class's AP50, or with more than MANY_CLASSES the five lowest and the five highest."""
    if len(per_class) <= MANY_CLASSES:
        return ", ".join(f"{name} {ap:.3f}" for name, ap in per_class.items())
    words = [f"{name} {ap:.3f}" for name, ap in sorted(per_class.items(), key=lambda item: item[1])]
    return f"lowest: {', '.join(words[:5])}; highest: {', '.join(words[-5:])} ({len(words)} classes)"


def _print_summary(numbers: dict, matrix: np.ndarray, class_names: Sequence[str]) -> None:
    """A few lines: per-class AP50, the best F1 threshold, the largest confusions."""
    best, settings = numbers["best_f1"], numbers["confusion_matrix"]
    print(f"[report] {numbers['images']} images: mAP50 {numbers['map50']:.3f}, mAP50-95 {numbers['map50_95']:.3f}",
          flush=True)
    print(f"[report] AP50 {_ap_summary(numbers['per_class_ap50'])}")
    print(f"[report] best F1 {best['f1']:.3f} at confidence {best['confidence']:.3f}: precision "
          f"{best['precision']:.3f}, recall {best['recall']:.3f} (all classes, IoU 0.5)")
    confusions = ", ".join(_largest_confusions(matrix, class_names)) or "none"
    print(f"[report] confusion at confidence >= {settings['confidence']:g}, IoU >= {settings['iou']:g}, "
          f"largest off the diagonal: {confusions}", flush=True)


def _present(truth: Sequence[dict], num_classes: int) -> np.ndarray:
    """Bool [K]: which classes have objects in `truth`."""
    present = np.zeros(num_classes, bool)
    for image in truth:
        present[np.asarray(image["classes"], np.int64).reshape(-1)] = True
    return present


def write_predictions(truth: list[dict], found: list[dict], class_names: Sequence[str], folder: str) -> dict:
    """The report of per-image ground truth and detections (`detection_metrics.predict_split`'s) into `folder`:
    the four PNGs, a printed summary; returns its numbers (JSON-able)."""
    num_classes = len(class_names)
    ground_truth = detection_metrics.coco_ground_truth(truth, list(class_names))
    evaluation = detection_metrics.coco_evaluation(ground_truth, detection_metrics.coco_results(found))
    scores = detection_metrics.coco_scores(ground_truth, evaluation)
    recall, precision = precision_at_50(evaluation, num_classes, _present(truth, num_classes))
    matches = matches_at_50(evaluation, num_classes)
    best = best_f1(*pooled(matches))
    matrix = confusion_matrix(truth, found, num_classes)
    plots.save(pr_figure(recall, precision, class_names), os.path.join(folder, "PR_curve.png"))
    plots.save(f1_figure(matches, class_names, best), os.path.join(folder, "F1_curve.png"))
    counts, normalised = confusion_figures(matrix, class_names, CONFIDENCE, MATCH_IOU)
    plots.save(counts, os.path.join(folder, "confusion_matrix.png"))
    plots.save(normalised, os.path.join(folder, "confusion_matrix_normalized.png"))
    numbers = {"images": len(truth), "map50": scores["map50"], "map50_95": scores["map50_95"],
               "per_class_ap50": scores["per_class_ap50"], "best_f1": best,
               "confusion_matrix": {"confidence": CONFIDENCE, "iou": MATCH_IOU,
                                    "names": [*class_names, "background"], "counts": matrix.tolist()}}
    _print_summary(numbers, matrix, class_names)
    return numbers


def write(model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str], folder: str) -> dict:
    """Runs `model` (with its non-max suppression) over `dataset`, evaluation batches of the whole validation
    split, and writes the report into `folder`; returns its numbers."""
    truth, found = detection_metrics.predict_split(detection_metrics.detector(model), dataset)
    return write_predictions(truth, found, class_names, folder)
