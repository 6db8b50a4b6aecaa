"""`--mode=export`: a run's trained model as a SavedModel (TensorFlow Serving), TFLite (float32, float16 and
full-integer int8) and ONNX, in RUN/export/, each checked against the Keras model at export time.

Every artifact predicts `--parity_images` validation images beside the Keras model; report.json and a printed
table give, per format, the task's agreement (engine/tasks/*.py `agreement`), the file size and the latency
of one image; a format outside its precision's `parity_limits` makes the export fail with the table.

Where each step of a prediction runs (engine/serving.py): the SavedModel holds decoding, resizing or
letterboxing, the model and the finishing (top-k, the mask at the original size, non-max suppression) in its
graph; TFLite and ONNX hold the model's core (for detection: the head's distance bins and class scores, before
box decoding and non-max suppression, which no TFLite builtin converts), and the host (engine/runners.py, `--mode=predict`) decodes before and finishes
after them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import time

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

from datasets.sources.base import IMAGE_EXTENSIONS
from engine import files, quiet, run_dir, runners
from engine.config import EXPORT_FORMATS, Config, FlagError, ParityError
from engine.job import load_source
from engine.serving import Serving, ServingCore

FILES = {"saved_model": "saved_model", "tflite_float32": "model_float32.tflite",
         "tflite_float16": "model_float16.tflite", "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}
PRECISIONS = {"saved_model": "float32", "tflite_float32": "float32", "tflite_float16": "float16",
              "tflite_int8": "int8", "onnx": "float32"}
NEEDS = {"tflite_float32": ["ai_edge_litert"], "tflite_float16": ["ai_edge_litert"],
         "tflite_int8": ["ai_edge_litert"], "onnx": ["tf2onnx", "onnxruntime"]}  # modules (the export extra)
HOST_STEPS = "model core in the file; decode and resize or letterbox before it, finish after it on the host"
STEPS = {"saved_model": "decode, resize or letterbox, model, finish: all in the graph (serving_default)",
         **{name: HOST_STEPS for name in EXPORT_FORMATS if name != "saved_model"}}
SAMPLES = 8  # validation images copied to export/samples/ for the prediction page
LATENCY_RUNS = 10


@dataclasses.dataclass(frozen=True)
class Image:
    """An encoded image file of a split."""

    name: str
    encoded: bytes


def run(config: Config) -> dict:
    """Writes RUN/export/ (the formats of --formats, metadata.json, samples/, report.json), prints the parity
    table, and raises ParityError if a format predicts outside its limits."""
    if not config.model_dir:
        raise FlagError("--mode=export needs --model_dir: the run directory whose model to export")
    formats = chosen_formats(config.formats)
    absl_logging.set_verbosity(absl_logging.WARNING)  # the converters log every function they save at INFO
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    task, model, weights = run_dir.trained_model(config.model_dir, config.checkpoint)
    run_config = run_dir.run_config(config.model_dir)[0]
    serving = Serving(task, model)
    source = load_source(run_config)
    validation = split_images(source.splits["val"], config.parity_images, shuffle=False)
    calibration = split_images(source.splits["train"], config.calibration_images, shuffle=True)
    out = os.path.join(config.model_dir, "export")
    tf.io.gfile.makedirs(out)
    print(f"[export] {task.name} model {task.config.model} at {task.config.image_size} px from {weights} -> {out}",
          flush=True)
    for name in formats:
        started = time.perf_counter()
        write_format(name, serving, os.path.join(out, FILES[name]), calibration)
        print(f"[export] {name}: {FILES[name]} in {time.perf_counter() - started:.0f} s", flush=True)
    write_metadata(out, serving, run_config, weights, formats)
    write_samples(out, validation[:SAMPLES])
    report = parity(serving, out, formats, validation)
    files.write_json(os.path.join(out, "report.json"), report, indent=2)
    print("\n".join(table_lines(report)), flush=True)
    failed = [f"{row['format']}: {', '.join(row['failed'])}" for row in report["formats"] if row["failed"]]
    if failed:
        raise ParityError(f"--mode=export: {'; '.join(failed)} (the table above; {out}/report.json)")
    return report


def chosen_formats(formats: list[str]) -> list[str]:
    """--formats, or every format whose libraries are installed (the others are named); a format asked for by
    name whose libraries are missing is a FlagError."""
    missing = {name: [m for m in NEEDS.get(name, []) if importlib.util.find_spec(m) is None] for name in EXPORT_FORMATS}
    if formats:
        absent = [f"{name} needs {', '.join(missing[name])}" for name in formats if missing[name]]
        if absent:
            raise FlagError(f"--formats={','.join(formats)}: {'; '.join(absent)}: pip install -e \".[export]\"")
        return list(formats)
    skipped = [name for name in EXPORT_FORMATS if missing[name]]
    if skipped:
        print(f"[export] left out {', '.join(skipped)}: pip install -e \".[export]\" adds them", flush=True)
    return [name for name in EXPORT_FORMATS if not missing[name]]


def split_images(split, count: int, shuffle: bool) -> list[Image]:
    """The first `count` images of `split` (a seeded shuffle if `shuffle`) as encoded files; arrays (IDX,
    TFDS images without files) are encoded as PNG."""
    images = []
    for record in split.records(tf.distribute.InputContext(), seed=0, shuffle=shuffle).take(count):
        if "encoded" in record:
            encoded = record["encoded"]
        else:
            pixels = record["image"]
            encoded = tf.io.encode_png(pixels[..., None] if pixels.shape.rank == 2 else pixels)
        images.append(Image(record["id"].numpy().decode(), encoded.numpy()))
    return images


def preprocessed(serving: Serving, images: list[Image]) -> tuple[np.ndarray, np.ndarray]:
    """`images` as the model's uint8 inputs [N, S, S, 3] and their original [h, w], through a tf.data map of
    the task's preprocessing."""
    ds = tf.data.Dataset.from_tensor_slices(([image.encoded for image in images], [image.name for image in images]))
    ds = ds.map(serving.preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(len(images))
    pixels, sizes = next(iter(ds))
    return pixels.numpy(), sizes.numpy()


def write_format(name: str, serving: Serving, path: str, calibration: list[Image]) -> None:
    """Writes one format: the SavedModel (`Serving.write_saved_model`), or the core converted by Keras'
    `Model.export` to TFLite (builtin ops only; float16 weights; int8 calibrated on `calibration`) or ONNX."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    if name == "saved_model":
        serving.write_saved_model(path)
        return
    size = serving.image_size
    core = ServingCore(serving.task, serving.model)
    core(tf.zeros([1, size, size, 3], tf.uint8))  # builds it: Keras exports built models only
    if name == "onnx":
        files.write_through_local(path, lambda local: core.export(
            local, format="onnx", input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], verbose=False))
        return
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if name == "tflite_float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS], "supported_types": [tf.float16]}}
    if name == "tflite_int8":
        pixels = preprocessed(serving, calibration)[0]
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                   "representative_dataset": lambda: ([pixels[i:i + 1]] for i in range(len(pixels)))}
    with quiet.quiet_native_stderr(not quiet.wants_native_logs()):  # the converter's C++ notes
        files.write_through_local(path, lambda local: core.export(
            local, format="litert", input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8)], verbose=False,
            **options))


def write_metadata(out: str, serving: Serving, run_config: Config, weights: str, formats: list[str]) -> None:
    """export/metadata.json: the task, input size, class names and run flags (what `--export` rebuilds the
    task's preprocessing and finishing from), the weights, and each format's file and where its steps run."""
    task = serving.task
    metadata = {"task": task.name, "image_size": serving.image_size, "class_names": task.class_names,
                "weights": weights, "config": dataclasses.asdict(task.config),
                "formats": {name: {"file": FILES[name], "precision": PRECISIONS[name],
                                   "steps": STEPS[name]}
                            for name in formats}}
    files.write_json(os.path.join(out, "metadata.json"), metadata, indent=2)


def write_samples(out: str, images: list[Image]) -> None:
    """Copies `images` to export/samples/ (the prediction page offers them), numbered, with their own names."""
    folder = os.path.join(out, "samples")
    if tf.io.gfile.exists(folder):
        tf.io.gfile.rmtree(folder)
    tf.io.gfile.makedirs(folder)
    for index, image in enumerate(images):
        name = os.path.basename(image.name)  # a file, or an array's id such as "t10k-images-idx3-ubyte[7]"
        stem = os.path.splitext(name)[0] if name.lower().endswith(IMAGE_EXTENSIONS) else name
        stem = re.sub(r"[^\w.-]+", "_", stem).strip("_")
        extension = ".jpg" if image.encoded[:3] == b"\xff\xd8\xff" else ".png"
        with tf.io.gfile.GFile(os.path.join(folder, f"{index:02d}_{stem}{extension}"), "wb") as f:
            f.write(image.encoded)


def _size_bytes(path: str) -> int:
    if not tf.io.gfile.isdir(path):
        return tf.io.gfile.stat(path).length
    return sum(tf.io.gfile.stat(os.path.join(d, n)).length for d, _, names in tf.io.gfile.walk(path) for n in names)


def _numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in outputs.items()}


def _median_ms(predict_one, runs: int = LATENCY_RUNS) -> float:
    predict_one()  # warm-up (tracing, allocation)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict_one()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def parity(serving: Serving, out: str, formats: list[str], images: list[Image]) -> dict:
    """Each format's predictions on `images` against the Keras model's: the task's agreement metrics and
    their limits, file size, and the median latency of one image at batch 1 (decode to finished prediction)."""
    task = serving.task
    pixels, sizes = preprocessed(serving, images)
    finish = serving.finish_graph
    keras_runner = runners.KerasRunner(serving)
    reference = _numpy(finish(keras_runner.core(pixels), sizes))
    first = tf.constant(images[0].encoded)
    preprocess = tf.function(serving.preprocess)

    def predict_first(runner: runners.Runner) -> dict:  # one image, decoded to finished, as a client runs it
        image, original_size = preprocess(first)
        return finish(runner.core(image[None].numpy()), original_size[None])

    rows = [{"format": "keras", "precision": "float32", "size_mb": None, "failed": [],
             "latency_ms": _median_ms(lambda: predict_first(keras_runner))}]
    for name in formats:
        path = os.path.join(out, FILES[name])
        if name == "saved_model":
            predict = tf.saved_model.load(path).signatures["serving_default"]
            found = {}
            for start in range(0, len(images), 16):
                batch = tf.constant([image.encoded for image in images[start:start + 16]])
                found = {k: found.get(k, []) + [v] for k, v in _numpy(predict(images=batch)).items()}
            predicted = {k: _concatenate(v) for k, v in found.items()}
            latency = _median_ms(lambda: predict(images=first[None]))
        else:
            runner = runners.open_artifact(path)
            predicted = _numpy(finish(runner.core(pixels), sizes))
            latency = _median_ms(lambda: predict_first(runner))
        metrics = task.agreement(reference, predicted)
        precision = PRECISIONS[name]
        failed = [f"{metric} {metrics[metric]:.4g} {sign} {limits[precision]} expected"
                  for metric, (sign, limits) in task.parity_limits.items()
                  if not (metrics[metric] >= limits[precision] if sign == ">=" else metrics[metric] <= limits[precision])]
        rows.append({"format": name, "precision": precision, **metrics, "size_mb": _size_bytes(path) / 2 ** 20,
                     "latency_ms": latency, "failed": failed})
    limits = {metric: {"sign": sign, **values} for metric, (sign, values) in task.parity_limits.items()}
    return {"task": task.name, "images": len(images), "limits": limits, "formats": rows}


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """Batches of one output joined; masks of different batch heights and widths padded with -1."""
    if parts[0].ndim == 3 and parts[0].dtype == np.int32:
        height, width = max(p.shape[1] for p in parts), max(p.shape[2] for p in parts)
        parts = [np.pad(p, [(0, 0), (0, height - p.shape[1]), (0, width - p.shape[2])], constant_values=-1)
                 for p in parts]
    return np.concatenate(parts)


def table_lines(report: dict) -> list[str]:
    """The parity table as printed: one row per format, the task's metrics, size, latency and verdict."""
    metrics = [key for key in report["formats"][-1] if key not in ("format", "precision", "size_mb", "latency_ms",
                                                                   "failed")]
    header = f"{'format':16s} {'precision':9s} " + " ".join(f"{m:>26s}" for m in metrics) + "    size MB  ms/image  ok"
    lines = [f"[export] parity on {report['images']} validation images against the Keras model:", header]
    for row in report["formats"]:
        values = " ".join(f"{row[m]:>26.4g}" if m in row else f"{'':>26s}" for m in metrics)
        size = f"{row['size_mb']:10.2f}" if row["size_mb"] is not None else f"{'':>10s}"
        verdict = "reference" if row["format"] == "keras" else ("FAIL" if row["failed"] else "yes")
        lines.append(f"{row['format']:16s} {row['precision']:9s} {values} {size} {row['latency_ms']:9.2f}  {verdict}")
    return lines
