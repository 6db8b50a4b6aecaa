"""Serving: a trained model with its task's own preprocessing and finishing, as TensorFlow functions.

A prediction runs in three steps, each written once:
  preprocess  one encoded image (JPEG, PNG, GIF, BMP; any size) decoded and resized or letterboxed exactly as
              evaluation does it (the task's `recipe(False).preprocess()`), with its original [h, w]
  core        the model on uint8 pixels at its input size (the task's `serving_core`): what every export
              format holds
  finish      the task's `serving_finish`: top-k classes, the mask at the original size, or boxes after
              non-max suppression in original pixels
The SavedModel holds all three in its graph; a TFLite or ONNX artifact holds `core`, and the host runs
`preprocess` before it and `finish` after it (engine/runners.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from datasets.ops import decode
from engine.tasks.base import Task


class ServingCore(keras.Model):
    """The model and its task's `serving_core` as one Keras model: what `Model.export` converts to TFLite and
    ONNX (uint8 pixels [B, S, S, 3] in, the core outputs by name out)."""

    def __init__(self, task: Task, model: keras.Model):
        super().__init__(name="serving_core")
        self.task = task
        self.model = model

    def call(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The core outputs of `images`."""
        return self.task.serving_core(self.model, images)


class Serving:
    """A task and its trained model as the three steps of a prediction, and the functions built from them
    (without a model, `preprocess` and `finish` only: the host's part beside an exported artifact)."""

    def __init__(self, task: Task, model: keras.Model | None = None):
        self.task = task
        self.model = model
        self.image_size = task.config.image_size
        self._preprocess = task.recipe(training=False).preprocess()
        self.finish_graph = tf.function(self.finish, reduce_retracing=True)  # `finish` traced once per run

    def preprocess(self, encoded: tf.Tensor, name: tf.Tensor | str = "image") -> tuple[tf.Tensor, tf.Tensor]:
        """One file's bytes as uint8 pixels [S, S, 3] and its original [h, w]; a cut-short or non-image file
        fails naming `name`."""
        example = self._preprocess(decode.check_encoded({"encoded": encoded, "id": tf.convert_to_tensor(name)}))
        return example["image"], tf.cast(example["original_size"], tf.int32)

    def core(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The model's core outputs for uint8 pixels [B, S, S, 3]."""
        return self.task.serving_core(self.model, images)

    def finish(self, core: dict[str, tf.Tensor], original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """The predictions of `core` outputs in the pixels of images of `original_size` [B, 2]."""
        core = {k: tf.convert_to_tensor(v) for k, v in core.items()}  # a runner's outputs are NumPy arrays
        return self.task.serving_finish(core, tf.cast(original_size, tf.int32))

    def predict_encoded(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Predictions for a batch of encoded images (string [B]), in their original pixels."""
        pixels, original_size = tf.map_fn(self.preprocess, images, fn_output_signature=(
            tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8), tf.TensorSpec([2], tf.int32)))
        return self.finish(self.core(pixels), original_size)

    def predict_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Predictions for uint8 pixels [B, S, S, 3] already at the model's size (their own coordinates)."""
        original_size = tf.fill([tf.shape(images)[0], 2], self.image_size)
        return self.finish(self.core(images), original_size)

    def write_saved_model(self, path: str) -> None:
        """The SavedModel for TensorFlow Serving: `serving_default` (encoded images, string [B], any size),
        `serve_pixels` (uint8 [B, S, S, 3]), `core` (the core outputs) and `metadata` (the task, the input
        size and the class names, in label order)."""
        size = self.image_size
        pixels = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
        class_names = tf.constant(self.task.class_names)
        task_name, image_size = tf.constant(self.task.name), tf.constant(size)
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint("serving_default", self.predict_encoded,
                             input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        archive.add_endpoint("serve_pixels", self.predict_pixels, input_signature=[pixels])
        archive.add_endpoint("core", self.core, input_signature=[pixels])
        archive.add_endpoint("metadata", lambda: {"class_names": class_names, "task": task_name,
                                                  "image_size": image_size}, input_signature=[])
        archive.write_out(path, verbose=False)
