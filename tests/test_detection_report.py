"""Detection's evaluation report: the confusion matrix with a background row and column on a hand-built case,
precision-recall and F1 curves against hand-computed AP and F1 (and pycocotools), and the report's PNGs written
at their sizes from hand-built predictions and from a detector run over evaluation batches."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from engine import config, detection_metrics, tasks
from engine.reports import detection, plots

NONE = np.zeros((0, 4))
PNGS = ("PR_curve.png", "F1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png")

# Classes a (0) and b (1); background is index 2 of the matrix.
CONFUSION_TRUTH = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "classes": [0, 1, 0]},
    {"boxes": [[0, 0, 10, 10]], "classes": [1]},
    {"boxes": [[0, 0, 10, 10]], "classes": [1]},
    {"boxes": NONE, "classes": []},
]
CONFUSION_FOUND = [
    # a correct (a, a); a on the b box: wrong class (b, a); b 0.1 on the last a: below 0.25, so that a is missed
    # (a, background); b where nothing is: a false positive (background, b).
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
     "scores": [0.9, 0.8, 0.1, 0.7], "classes": [0, 0, 1, 1]},
    # b at IoU 0.81 and a at IoU 1 on one b: matched by IoU whatever the score or class, (b, a); the b left over
    # is a false positive (background, b).
    {"boxes": [[1, 1, 10, 10], [0, 0, 10, 10]], "scores": [0.9, 0.6], "classes": [1, 0]},
    # nothing found: b missed (b, background)
    {"boxes": NONE, "scores": [], "classes": []},
    # a where no object is: (background, a)
    {"boxes": [[0, 0, 10, 10]], "scores": [0.5], "classes": [0]},
]
EXPECTED_CONFUSION = [
    [1, 0, 1],
    [2, 0, 1],
    [1, 2, 0],
]

# Two objects of a, three detections of a ranked matched (0.9), false (0.8), matched (0.7): precision 1 up to
# recall 0.5 and 2/3 up to 1, so on COCO's 101 recall points AP50 = (51 + 50 * 2/3) / 101. One object of b,
# found at 0.6: AP50 1. Best F1: class a 0.8 at 0.7 (precision 2/3, recall 1); all classes 6/7 at 0.6 (3 of
# 4 detections, 3 of 3 objects).
CURVE_TRUTH = [
    {"file_name": "1.jpg", "height": 100, "width": 100, "boxes": [[0, 0, 10, 10]], "classes": [0]},
    {"file_name": "2.jpg", "height": 100, "width": 100, "boxes": [[0, 0, 10, 10], [50, 50, 60, 60]],
     "classes": [0, 1]},
]
CURVE_FOUND = [
    {"boxes": [[0, 0, 10, 10], [30, 30, 40, 40]], "scores": [0.9, 0.8], "classes": [0, 0]},
    {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "scores": [0.7, 0.6], "classes": [0, 1]},
]
AP50_A = (51 + 50 * 2 / 3) / 101


def _evaluation(truth: list[dict], found: list[dict], class_names: list[str]):
    ground_truth = detection_metrics.coco_ground_truth(truth, class_names)
    results = detection_metrics.coco_results(found)
    return detection_metrics.coco_evaluation(ground_truth, results), detection_metrics.coco_map(ground_truth, results)


def test_confusion_matrix_counts_matches_misses_false_positives_and_wrong_classes():
    matrix = detection.confusion_matrix(CONFUSION_TRUTH, CONFUSION_FOUND, num_classes=2)
    assert matrix.tolist() == EXPECTED_CONFUSION
    normalised = plots.row_normalised(matrix)
    assert normalised == pytest.approx(np.array([[1 / 2, 0, 1 / 2], [2 / 3, 0, 1 / 3], [1 / 3, 2 / 3, 0]]))


def test_confusion_matrix_settings_decide_what_counts():
    everything = detection.confusion_matrix(CONFUSION_TRUTH, CONFUSION_FOUND, 2, confidence=0.0)
    assert everything[0].tolist() == [1, 1, 0]  # the 0.1 detection now finds the last a, as b
    strict = detection.confusion_matrix(CONFUSION_TRUTH, CONFUSION_FOUND, 2, iou=0.9)
    assert strict[1].tolist() == [2, 0, 1] and strict[2].tolist() == [1, 2, 0]  # IoU 1 still matches


def test_precision_recall_curves_are_pycocotools_and_their_areas_the_ap():
    evaluation, scores = _evaluation(CURVE_TRUTH, CURVE_FOUND, ["a", "b", "c"])
    recall, precision = detection.precision_at_50(evaluation, 3, np.array([True, True, False]))
    assert recall == pytest.approx(np.linspace(0, 1, 101))
    assert precision[0] == pytest.approx(np.r_[np.ones(51), np.full(50, 2 / 3)])
    assert precision[1] == pytest.approx(np.ones(101)) and np.isnan(precision[2]).all()
    assert np.mean(precision[0]) == pytest.approx(AP50_A) == pytest.approx(scores["per_class_ap50"]["a"])
    assert np.mean(np.nanmean(precision, axis=0)) == pytest.approx(scores["map50"]) == pytest.approx((AP50_A + 1) / 2)


def test_f1_curves_and_the_best_threshold():
    evaluation, scores = _evaluation(CURVE_TRUTH, CURVE_FOUND, ["a", "b"])
    matches = detection.matches_at_50(evaluation, 2)
    assert matches[0][0].tolist() == [0.9, 0.8, 0.7] and matches[0][1].tolist() == [True, False, True]
    assert matches[0][2] == 2 and matches[1][2] == 1
    precision, recall, f1 = detection.f1_curve(*matches[0], np.array([0.65, 0.75, 0.85, 0.95]))
    assert precision == pytest.approx([2 / 3, 1 / 2, 1, 0]) and recall == pytest.approx([1, 1 / 2, 1 / 2, 0])
    assert f1 == pytest.approx([0.8, 0.5, 2 / 3, 0])
    assert detection.best_f1(*matches[0]) == pytest.approx(
        {"f1": 0.8, "precision": 2 / 3, "recall": 1.0, "confidence": 0.7})
    best = detection.best_f1(*detection.pooled(matches))
    assert best == pytest.approx({"f1": 6 / 7, "precision": 0.75, "recall": 1.0, "confidence": 0.6})
    assert (best["precision"], best["recall"], best["confidence"]) == pytest.approx(
        (scores["precision"], scores["recall"], scores["confidence"]))  # the engine's val_precision, val_recall


def _sizes(folder) -> dict:
    return {name: Image.open(folder / name).size for name in PNGS}


def test_write_predictions_writes_four_pngs_and_returns_the_numbers(tmp_path, capsys):
    numbers = detection.write_predictions(CURVE_TRUTH, CURVE_FOUND, ["a", "b"], str(tmp_path))
    assert _sizes(tmp_path) == {"PR_curve.png": (1000, 600), "F1_curve.png": (1000, 600),
                                "confusion_matrix.png": (650, 500), "confusion_matrix_normalized.png": (650, 500)}
    assert numbers["map50"] == pytest.approx((AP50_A + 1) / 2)
    assert numbers["per_class_ap50"] == pytest.approx({"a": AP50_A, "b": 1.0})
    assert numbers["best_f1"] == pytest.approx({"f1": 6 / 7, "precision": 0.75, "recall": 1.0, "confidence": 0.6})
    assert numbers["confusion_matrix"] == {"confidence": 0.25, "iou": 0.45, "names": ["a", "b", "background"],
                                           "counts": [[2, 0, 0], [0, 1, 0], [1, 0, 0]]}
    printed = capsys.readouterr().out
    assert "AP50 a 0.835, b 1.000" in printed and "best F1 0.857 at confidence 0.600" in printed
    assert "largest off the diagonal: false a 1" in printed


def test_write_predictions_without_detections_scores_zero(tmp_path):
    nothing = [{"boxes": NONE, "scores": [], "classes": []}] * 2
    numbers = detection.write_predictions(CURVE_TRUTH, nothing, ["a", "b"], str(tmp_path))
    assert numbers["map50"] == 0.0 and numbers["best_f1"]["f1"] == 0.0
    assert numbers["confusion_matrix"]["counts"] == [[0, 0, 2], [0, 0, 1], [0, 0, 0]]
    assert set(_sizes(tmp_path)) == set(PNGS)


def test_a_hundred_classes_draw_at_their_sizes(tmp_path):
    rng = np.random.default_rng(0)
    truth, found = [], []
    for i in range(200):
        corner = rng.uniform(0, 400, (3, 2))
        boxes = np.concatenate([corner, corner + 50], axis=1)
        truth.append({"file_name": f"{i}.jpg", "height": 500, "width": 500, "boxes": boxes,
                      "classes": rng.integers(0, 100, 3)})
        found.append({"boxes": boxes + rng.normal(0, 4, boxes.shape), "scores": rng.uniform(0, 1, 3),
                      "classes": np.where(rng.uniform(size=3) < 0.8, truth[-1]["classes"], rng.integers(0, 100, 3))})
    numbers = detection.write_predictions(truth, found, [f"class {k}" for k in range(100)], str(tmp_path))
    assert _sizes(tmp_path) == {"PR_curve.png": (1000, 600), "F1_curve.png": (1000, 600),
                                "confusion_matrix.png": (3150, 3000), "confusion_matrix_normalized.png": (3150, 3000)}
    assert np.sum(numbers["confusion_matrix"]["counts"]) >= 600


def _evaluation_batches(size: int) -> tf.data.Dataset:
    """Three real images (one without objects) and one padding example, letterboxed to `size`, as the
    evaluation pipeline yields them."""
    rng = np.random.default_rng(0)
    boxes = np.full((4, 5, 4), 0.0, np.float32)
    classes = np.full((4, 5), -1, np.int32)
    boxes[0, :2], classes[0, :2] = [[4, 4, 30, 30], [32, 10, 60, 40]], [0, 1]
    boxes[1, :1], classes[1, :1] = [[10, 20, 50, 44]], [1]
    return tf.data.Dataset.from_tensor_slices({
        "image": rng.integers(0, 255, (4, size, size, 3), np.uint8), "boxes": boxes, "classes": classes,
        "weight": np.array([1, 1, 1, 0], np.float32), "id": np.array([b"0.jpg", b"1.jpg", b"2.jpg", b"pad"]),
        "original_size": np.array([[size, size], [size // 2, size], [size, size], [size, size]], np.int32),
    }).batch(2)


def test_write_runs_a_detector_over_evaluation_batches(tmp_path):
    task = tasks.build(config.Config(task="detection", image_size=64), ["a", "b"])
    numbers = detection.write(task.build_model(), _evaluation_batches(64), task.class_names, str(tmp_path))
    assert numbers["images"] == 3  # the padding example left out
    counts = np.array(numbers["confusion_matrix"]["counts"])
    assert counts[:2].sum() == 3  # each of the three objects counted once
    assert set(numbers["per_class_ap50"]) == {"a", "b"} and set(_sizes(tmp_path)) == set(PNGS)
