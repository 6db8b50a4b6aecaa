"""One interface over a trained model and its exported artifacts: each runs the core step of a prediction
(engine/serving.py) on uint8 pixels at the model's input size.

  KerasRunner       the trained model (a run directory's checkpoint)
  SavedModelRunner  the SavedModel's `core` signature
  TFLiteRunner      a .tflite file in the LiteRT interpreter (ai-edge-litert), one image at a time
  ONNXRunner        a .onnx file in onnxruntime
"""

from __future__ import annotations

import abc
import os

import numpy as np
import tensorflow as tf

from engine.config import FlagError
from engine.serving import Serving


class Runner(abc.ABC):
    """Runs the core step of a prediction."""

    name: str

    @abc.abstractmethod
    def core(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The core outputs for uint8 pixels [B, S, S, 3]."""


class KerasRunner(Runner):
    """The trained Keras model, compiled once as a tf.function."""

    name = "keras"

    def __init__(self, serving: Serving):
        self._core = tf.function(serving.core, reduce_retracing=True)

    def core(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self._core(tf.constant(images)).items()}


class SavedModelRunner(Runner):
    """The `core` signature of a SavedModel written by `Serving.write_saved_model`."""

    name = "saved_model"

    def __init__(self, path: str):
        self.loaded = tf.saved_model.load(path)
        self._core = self.loaded.signatures["core"]

    def core(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self._core(images=tf.constant(images)).items()}


class TFLiteRunner(Runner):
    """A .tflite file in the LiteRT interpreter (TensorFlow's own tf.lite.Interpreter is deprecated), batch 1."""

    def __init__(self, path: str, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise FlagError(f"{path}: running TFLite needs ai-edge-litert: pip install -e \".[export]\"") from None
        self.name = os.path.splitext(os.path.basename(path))[0]
        interpreter = Interpreter(model_content=_read(path), num_threads=threads or os.cpu_count())
        self._run = interpreter.get_signature_runner()
        self._input = next(iter(interpreter.get_signature_list()["serving_default"]["inputs"]))

    def core(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = [self._run(**{self._input: images[i:i + 1]}) for i in range(len(images))]
        return {k: np.concatenate([out[k] for out in outputs]) for k in outputs[0]}


class ONNXRunner(Runner):
    """A .onnx file in onnxruntime (CPU)."""

    name = "onnx"

    def __init__(self, path: str):
        try:
            import onnxruntime
        except ImportError:
            raise FlagError(f"{path}: running ONNX needs onnxruntime: pip install -e \".[export]\"") from None
        self.session = onnxruntime.InferenceSession(_read(path), providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self._outputs = [output.name for output in self.session.get_outputs()]

    def core(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, {self._input: images})))


def _read(path: str) -> bytes:
    """The bytes of the file at `path` (any file system: LiteRT and onnxruntime open local paths only)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def open_artifact(path: str) -> Runner:
    """The runner of an exported artifact: a SavedModel directory, or a .tflite or .onnx file."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return SavedModelRunner(path)
    if path.endswith(".tflite"):
        return TFLiteRunner(path)
    if path.endswith(".onnx"):
        return ONNXRunner(path)
    raise FlagError(f"--export={path} is not a SavedModel directory, a .tflite or a .onnx file")
