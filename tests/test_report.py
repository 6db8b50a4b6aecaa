"""The evaluation report: classification numbers against hand-computed values, the files `write` makes, the
training curves of a restarted run, and the same numbers under mirrored and one_device."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import pipeline
from engine import fit, job as job_module, report
from engine.config import Config
from engine.reports import classification, curves

NAMES = ["circle", "square", "triangle"]
HISTORY_COLUMNS = ("epoch,accuracy,images_per_second,input_wait_fraction,input_wait_seconds,learning_rate,loss,"
                   "step_seconds,val_accuracy,val_loss")


def _hand_built_scores() -> classification.Scores:
    # Classes a, b, c, d: c is never predicted, d never a label (but predicted once).
    labels = [0, 0, 0, 1, 1, 2, 2, 1, 2, 0]
    predicted = [0, 0, 1, 1, 3, 0, 1, 1, 1, 0]
    return classification.scores(np.array(labels), np.array(predicted)[:, None], num_classes=4)


def test_confusion_matrix_and_precision_recall_f1_equal_hand_computed_values():
    result = _hand_built_scores()
    # Rows true, columns predicted: a -> a 3, a -> b 1; b -> b 2, b -> d 1; c -> a 1, c -> b 2; d: no labels.
    np.testing.assert_array_equal(result.confusion, [[3, 1, 0, 0], [0, 2, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(result.normalised, [[3 / 4, 1 / 4, 0, 0], [0, 2 / 3, 0, 1 / 3],
                                                   [1 / 3, 2 / 3, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(result.support, [4, 3, 3, 0])
    # Precision = diagonal / column sum (4, 5, 0, 1): c never predicted -> 0; d predicted once, wrongly -> 0.
    np.testing.assert_allclose(result.precision, [3 / 4, 2 / 5, 0, 0])
    # Recall = diagonal / support: d absent from the labels -> 0.
    np.testing.assert_allclose(result.recall, [3 / 4, 2 / 3, 0, 0])
    # F1 = 2PR / (P + R): b = 2 (2/5)(2/3) / (2/5 + 2/3) = (8/15) / (16/15) = 1/2; 0 where P + R = 0.
    np.testing.assert_allclose(result.f1, [3 / 4, 1 / 2, 0, 0])
    assert result.accuracy == 0.5  # 5 of 10 on the diagonal
    assert result.top5_accuracy is None  # 4 classes: no top-5
    # Macro over a, b, c (d left out): P (3/4 + 2/5 + 0) / 3 = 23/60, R (3/4 + 2/3 + 0) / 3 = 17/36,
    # F1 (3/4 + 1/2 + 0) / 3 = 5/12.
    assert result.macro == pytest.approx({"precision": 23 / 60, "recall": 17 / 36, "f1": 5 / 12})
    # Weighted by support (4, 3, 3, 0) / 10: P (3 + 6/5) / 10 = 0.42, R (3 + 2) / 10 = 0.5, F1 (3 + 3/2) / 10 = 0.45.
    assert result.weighted == pytest.approx({"precision": 0.42, "recall": 0.5, "f1": 0.45})
    # Off-diagonal counts, largest first, ties by (true, predicted).
    assert result.most_confused == [(2, 1, 2), (0, 1, 1), (1, 3, 1), (2, 0, 1)]


def test_the_json_numbers_and_the_printed_table_name_the_classes():
    result = _hand_built_scores()
    numbers = classification.as_json(result, ["a", "b", "c", "d"])
    assert numbers["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert numbers["most_confused"][0] == {"true": "c", "predicted": "b", "count": 2}
    assert numbers["confusion_matrix"][1] == [0, 2, 0, 1] and "top5_accuracy" not in numbers
    printed = classification.table(result, ["a", "b", "c", "d"])
    assert "   macro avg     0.3833    0.4722    0.4167        10" in printed
    assert "absent from the labels (left out of the macro avg): d" in printed
    assert "most confused (true -> predicted: count): c -> b: 2, a -> b: 1, b -> d: 1, c -> a: 1" in printed


def test_top5_accuracy_counts_a_label_among_the_five_most_probable_classes():
    ranked = np.array([[0, 1, 2, 3, 4, 5, 6],    # label 0 first: top-1 and top-5
                       [2, 3, 4, 5, 1, 6, 0],    # label 1 fifth: top-5 only
                       [0, 1, 3, 4, 5, 2, 6],    # label 2 sixth: neither
                       [6, 5, 4, 3, 2, 1, 0]])   # label 3 fourth: top-5 only
    result = classification.scores(np.array([0, 1, 2, 3]), ranked, num_classes=7)
    assert (result.accuracy, result.top5_accuracy) == (0.25, 0.75)


def test_mistakes_keep_the_most_confidently_wrong_examples_across_batches():
    mistakes = classification.Mistakes(keep=2)
    images = np.arange(4)[:, None, None, None].repeat(3, axis=-1).astype(np.uint8)  # image i: pixel value i
    mistakes.add(images[:2], np.array([0, 1]), np.array([1, 1]), np.array([0.9, 0.99]))  # the second is right
    mistakes.add(images[2:], np.array([2, 0]), np.array([0, 2]), np.array([0.95, 0.5]))
    np.testing.assert_array_equal(mistakes.images[:, 0, 0, 0], [2, 0])
    np.testing.assert_allclose(mistakes.confidence, [0.95, 0.9])


def _pixel_model(num_classes: int, size: int) -> keras.Model:
    """Logits one_hot(first pixel's red) * green / 10: the prediction and its confidence set by the image."""
    inputs = keras.Input((size, size, 3), dtype="uint8")
    first = keras.ops.cast(inputs[:, 0, 0, :], "float32")
    logits = keras.ops.one_hot(keras.ops.cast(first[:, 0], "int32"), num_classes) * first[:, 1:2] / 10
    return keras.Model(inputs, logits)


def _dataset(rows: list[tuple[int, int, int, float]], size: int = 8) -> tf.data.Dataset:
    """Batches of 4 of (label, predicted, green, weight) rows."""
    images = np.full((len(rows), size, size, 3), 128, np.uint8)
    images[:, 0, 0, 0] = [row[1] for row in rows]
    images[:, 0, 0, 1] = [row[2] for row in rows]
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.array([row[0] for row in rows], np.int32),
        "weight": np.array([row[3] for row in rows], np.float32)}).batch(4)


def test_write_leaves_out_padding_and_writes_the_report_files(tmp_path, capsys):
    # Wrong: triangle -> circle (green 60: confidence e^6 / (e^6 + 2) = 0.995), circle -> square (0.909),
    # square -> triangle (0.576). The padding (weight 0) would be the most confident mistakes if it counted.
    rows = [(0, 0, 50, 1.0), (0, 1, 30, 1.0), (1, 1, 40, 1.0), (2, 0, 60, 1.0), (2, 2, 20, 1.0), (1, 2, 10, 1.0),
            (0, 2, 250, 0.0), (0, 2, 250, 0.0)]
    numbers = classification.write(_pixel_model(3, 8), _dataset(rows), NAMES, str(tmp_path))
    assert numbers["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert numbers["examples"] == 6 and numbers["accuracy"] == 0.5
    assert numbers["per_class"]["circle"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert [pair["count"] for pair in numbers["most_confused"]] == [1, 1, 1]
    with open(tmp_path / "per_class.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["class", "precision", "recall", "f1", "support"]
    assert table[1:] == [[name, "0.5000", "0.5000", "0.5000", "2"] for name in NAMES] + [
        ["macro avg", "0.5000", "0.5000", "0.5000", "6"], ["weighted avg", "0.5000", "0.5000", "0.5000", "6"]]
    for name in ("confusion_matrix", "confusion_matrix_normalized"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.size == (650, 500)  # plots.confusion_matrix at 3 classes: 6.5 x 5 inches at 100 dpi
    with Image.open(tmp_path / "mistakes.png") as picture:
        width, height = picture.size  # one row of three 8 px images enlarged to 192 px, with captions
        assert width >= 3 * 192 and 192 < height < 2 * 192
    printed = capsys.readouterr().out
    assert "classification of 6 validation images" in printed and "top-5" not in printed


def test_write_without_mistakes_says_so_in_mistakes_png(tmp_path):
    numbers = classification.write(_pixel_model(3, 8), _dataset([(0, 0, 50, 1.0), (2, 2, 50, 1.0)]), NAMES,
                                   str(tmp_path))
    assert numbers["accuracy"] == 1.0 and numbers["most_confused"] == []
    with Image.open(tmp_path / "mistakes.png") as picture:
        assert picture.width == 320  # one caption band: "no misclassified validation images"


def _write_history(path: str, rows: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join([HISTORY_COLUMNS, *rows]) + "\n")
    return path


def test_curves_keep_the_last_row_of_a_repeated_epoch_and_draw_results_png(tmp_path):
    # Epochs 0-2, then a restart that re-trains epoch 2 (0-based) and goes on to 3.
    history = _write_history(str(tmp_path / "history.csv"), [
        "0,0.5,1000,0.1,0.01,0.001,1.0,0.05,0.4,1.1",
        "1,0.6,1100,0,0,0.0009,0.8,0.05,0.5,0.9",
        "2,0.7,1200,0,0,0.0007,0.6,0.05,0.1,5.0",
        "2,0.72,900,0,0,0.0007,0.58,0.05,0.6,0.7",
        "3,0.8,1250,0,0,0.0005,0.5,0.05,0.7,0.6"])
    epochs, series, resumed = curves.read(history)
    np.testing.assert_array_equal(epochs, [1, 2, 3, 4])
    np.testing.assert_allclose(series["val_accuracy"], [0.4, 0.5, 0.6, 0.7])
    assert resumed == [3] and "step_seconds" not in series
    path = curves.write(history, str(tmp_path / "results.png"))
    with Image.open(path) as picture:
        assert picture.size == (1800, 400)  # 4 panels in a row of 4.5 x 3.4 inches + 0.6 for the title, 100 dpi


def test_curves_of_one_epoch_without_validation(tmp_path):
    history = _write_history(str(tmp_path / "history.csv"), ["0,0.5,1000,0,0,0.001,1.0,0.05,NA,NA"])
    with Image.open(curves.write(history, str(tmp_path / "results.png"))) as picture:
        assert picture.size == (1800, 400)


def test_curve_panels_leave_out_per_class_columns():
    columns = ["box_loss", "class_loss", "images_per_second", "learning_rate", "loss", "val_ap50_circle",
               "val_ap50_square", "val_box_loss", "val_class_loss", "val_loss", "val_map50", "val_map50_95",
               "val_iou_background", "val_mean_iou", "mean_iou"]
    assert curves.panels(columns) == [
        ("loss", ["loss", "val_loss"]), ("box_loss", ["box_loss", "val_box_loss"]),
        ("class_loss", ["class_loss", "val_class_loss"]), ("map50", ["val_map50"]), ("map50_95", ["val_map50_95"]),
        ("mean_iou", ["mean_iou", "val_mean_iou"]), ("learning rate", ["learning_rate"]),
        ("images/s (training)", ["images_per_second"])]


def _spread_logits(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Sets the logits layer to random directions of the standardised pooled features, so that an untrained
    model's predictions spread over the classes (its own logits pick one class for nearly every image)."""
    pooled = np.concatenate([keras.Model(model.inputs, model.get_layer("pool").output)(batch["image"])
                             for batch in dataset])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    directions = np.random.default_rng(0).normal(size=model.get_layer("logits").get_weights()[0].shape)
    kernel = directions / np.where(std > 1e-6, std, np.inf)[:, None]
    model.get_layer("logits").set_weights([kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)])


def test_the_report_has_the_same_numbers_under_mirrored_and_one_device(tiny_shapes, tmp_path):
    # Batches of 48 (24 per replica under mirrored): the 64 validation images and 32 padding examples.
    numbers, weights = {}, None
    for strategy in ("mirrored", "one_device"):
        job = job_module.prepare(Config(dataset=f"shapes:{tiny_shapes}", strategy=strategy, image_size=32,
                                        batch_size=48, epochs=1, mode="eval", model_dir=str(tmp_path / strategy)))
        model = fit.build_model(job)
        if weights is None:
            _spread_logits(model, pipeline.build_dataset(job.val_split, job.pipeline_config(training=False)))
            weights = model.get_weights()  # the mirrored model's, for both
        model.set_weights(weights)
        numbers[strategy] = report.write(job, model, "x")
        assert os.path.exists(tmp_path / strategy / "report" / "report.json")
    matrix = np.array(numbers["mirrored"]["confusion_matrix"])
    assert numbers["mirrored"]["examples"] == matrix.sum() == 64  # the padding left out
    assert np.count_nonzero(matrix.sum(axis=0)) >= 3  # predictions of 3 classes or more
    assert numbers["mirrored"] == numbers["one_device"]
