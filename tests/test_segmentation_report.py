"""The segmentation report (engine/reports/segmentation.py) on a hand-built case: a model whose predicted class
is the image's first channel, masks with ignored pixels and a zero-weight padding example that must not count."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from engine import tasks
from engine.config import Config
from engine.reports import segmentation as segmentation_report

NAMES = ["background", "cat", "dog", "bird"]  # "bird" never occurs: its IoU is n/a
IGNORE = 255


def _example(mask: list[list[int]], predicted: list[list[int]], weight: float) -> dict[str, np.ndarray]:
    """One 4x4 example whose image carries the class the model predicts in channel 0."""
    image = np.repeat(np.asarray(predicted, np.uint8)[..., None], 3, axis=-1)
    return {"image": image, "mask": np.asarray(mask, np.uint8)[..., None], "weight": np.float32(weight)}


def _dataset() -> tf.data.Dataset:
    """Two batches of two, as evaluation batches them: the third example is padding (weight 0) whose 16
    "cat" pixels predicted "dog" must not count."""
    examples = [
        _example([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE], [2, 2, IGNORE, IGNORE]],
                 [[0, 1, 1, 1], [0, 0, 1, 1], [2, 1, 0, 2], [2, 2, 2, 2]], 1.0),
        _example([[IGNORE, 0, 0, 0]] + [[0] * 4] * 3, [[2] * 4] + [[0] * 4] * 3, 1.0),
        _example([[1] * 4] * 4, [[2] * 4] * 4, 0.0),
        _example([[2] * 4] * 4, [[2] * 4] * 4, 1.0),
    ]
    stacked = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
    return tf.data.Dataset.from_tensor_slices(stacked).batch(2)


def _model() -> keras.Model:
    """Logits that pick the image's first channel as the class."""
    images = keras.Input((4, 4, 3), dtype="uint8")
    logits = keras.layers.Lambda(lambda x: 10.0 * tf.one_hot(tf.cast(x[..., 0], tf.int32), len(NAMES)))(images)
    return keras.Model(images, logits)


# Counted pixels by hand: example 0 has 12 (true background 0,1,0,0; cat 1,1,1,1; dog 2,1,2,2), example 1 has 15
# (three background pixels predicted dog, twelve right), example 3 sixteen dog pixels right; example 2 none.
EXPECTED = np.array([[15, 1, 3, 0], [0, 4, 0, 0], [0, 1, 19, 0], [0, 0, 0, 0]])
EXPECTED_IOU = [15 / 19, 4 / 6, 19 / 23]  # true positives / (row + column - true positives)


def test_report_counts_only_labelled_pixels_of_real_examples_and_matches_the_metric(tmp_path, capsys):
    model = _model()
    numbers = segmentation_report.write(model, _dataset(), NAMES, str(tmp_path), IGNORE)
    assert numbers["confusion_matrix"] == EXPECTED.tolist()
    assert list(numbers["per_class_iou"]) == NAMES
    assert [numbers["per_class_iou"][name] for name in NAMES[:3]] == pytest.approx(EXPECTED_IOU)
    assert numbers["per_class_iou"]["bird"] is None
    assert numbers["mean_iou"] == pytest.approx(np.mean(EXPECTED_IOU))
    assert numbers["pixel_accuracy"] == pytest.approx(38 / 43)
    assert numbers["most_confused"][0] == {"true": "background", "predicted": "dog", "pixels": 3,
                                           "share_of_true": pytest.approx(3 / 19)}
    printed = capsys.readouterr().out
    assert "bird" in printed and "n/a" in printed and "background -> dog" in printed

    # The engine's compiled metric (ConfusionMatrix over the task's packed targets) on the same data
    task = tasks.build(Config(task="segmentation", model="unet", ignore_value=IGNORE), NAMES)
    model.compile(**task.compile_args())
    compiled = model.evaluate(_dataset().map(task.model_io), verbose=0, return_dict=True)
    assert compiled["mean_iou"] == pytest.approx(numbers["mean_iou"], abs=1e-6)

    # The figures' size x dpi (engine/reports/plots.py): 6.5 x 5 in and 8 x 3 in at 100 dpi for 4 classes
    for name, size in (("confusion_matrix_normalized.png", (650, 500)), ("per_class_iou.png", (800, 300))):
        with Image.open(os.path.join(tmp_path, name)) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.size == size, name
