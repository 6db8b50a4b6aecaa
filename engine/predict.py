"""`--mode=predict`: a run's model (`--model_dir`) or an exported artifact (`--export`: SavedModel, .tflite,
.onnx) on image files (`--images`: a file, a folder or a glob), written as predictions.csv, predictions.json
and drawn images (and class-index mask PNGs for segmentation) in `--output`.

Files are read, decoded and resized or letterboxed by a parallel tf.data map of the task's own preprocessing
(engine/serving.py), batched, run through the model's core and finished in the original images' pixels.
Files that do not decode are listed by name and left out; nothing else stops.
"""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Iterator

import numpy as np
import tensorflow as tf

from datasets import drawing
from datasets.sources.base import list_images, normalised
from datasets.tools import reason
from engine import files, run_dir, runners, tasks
from engine.config import Config, FlagError
from engine.serving import Serving
from engine.tasks.base import Task

BATCH_SIZE = 32  # images per call of the model when --batch_size is not given
DRAWN_SIDE = 256  # drawn images have at least this longer side


def run(config: Config) -> dict:
    """Predicts `--images` with the model of `--model_dir` or `--export`; writes and returns the summary."""
    if not config.export and not config.model_dir:
        raise FlagError("--mode=predict needs --model_dir (a run directory) or --export (an exported model)")
    paths = image_paths(config.images)
    serving, runner, default_output = open_model(config)
    output = config.output or default_output
    started = time.perf_counter()
    results, bad = [], {}
    for path, prediction in predict_files(serving, runner, paths, config.batch_size or BATCH_SIZE, bad):
        results.append((path, prediction))
    seconds = time.perf_counter() - started
    summary = write_outputs(output, serving.task, results, bad, _common_folder(paths))
    summary.update({"model": runner.name, "seconds": seconds, "images_per_second": len(results) / seconds})
    print(f"[predict] {len(results)} images with {runner.name} in {seconds:.1f} s ({len(results) / seconds:.1f} "
          f"images/s), {len(bad)} left out -> {output}", flush=True)
    for path, why in bad.items():
        print(f"[predict] left out {path}: {why}", flush=True)
    print("[predict] " + summary["counts_title"] + ": " + ", ".join(
        f"{name} {count}" for name, count in summary["counts"].items()), flush=True)
    return summary


def open_model(config: Config) -> tuple[Serving, runners.Runner, str]:
    """The task's serving steps, the runner of --export (else of --model_dir's --checkpoint), and the default
    output folder (predictions/ beside the export, or in the run directory)."""
    if config.export:
        export_dir, artifact = _export_paths(config.export)
        metadata = files.read_json(os.path.join(export_dir, "metadata.json"))
        task = tasks.build(run_dir.config_from_dict(metadata["config"]), metadata["class_names"])
        return Serving(task), runners.open_artifact(artifact), os.path.join(export_dir, "predictions")
    if config.model_dir:
        task, model, _ = run_dir.trained_model(config.model_dir, config.checkpoint)
        serving = Serving(task, model)
        return serving, runners.KerasRunner(serving), os.path.join(config.model_dir, "predictions")
    raise FlagError(f"--mode={config.mode} needs --model_dir (a run directory) or --export (an exported model)")


def _export_paths(export: str) -> tuple[str, str]:
    """The export directory (with metadata.json) and the artifact that --export names (an export directory
    means its SavedModel)."""
    if tf.io.gfile.exists(os.path.join(export, "metadata.json")):
        return export, os.path.join(export, "saved_model")
    parent = os.path.dirname(normalised(export))
    if tf.io.gfile.exists(export) and tf.io.gfile.exists(os.path.join(parent, "metadata.json")):
        return parent, export
    raise FlagError(f"--export={export} is not an export of this engine (python launch.py --mode=export writes "
                    "RUN/export with metadata.json) nor an artifact inside one")


def image_paths(images: str) -> list[str]:
    """The image files --images names: a file, the images anywhere under a folder, or a glob's matches."""
    if not images:
        raise FlagError("--mode=predict needs --images: an image file, a folder or a glob pattern")
    if tf.io.gfile.isdir(images):
        found = list_images(images)
    elif tf.io.gfile.exists(images):
        found = [images]
    else:
        found = sorted(path for path in tf.io.gfile.glob(images) if not tf.io.gfile.isdir(path))
    if not found:
        raise FlagError(f"--images={images} names no image files")
    return found


def predict_files(serving: Serving, runner: runners.Runner, paths: list[str], batch_size: int,
                  bad: dict[str, str]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yields (path, prediction) for the files that decode, in order; the others go into `bad` with why."""
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda path: (path, *serving.preprocess(tf.io.read_file(path), path)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
    finish = serving.finish_graph
    done = set()
    for names, images, sizes in ds:
        found = {k: v.numpy() for k, v in finish(runner.core(images.numpy()), sizes).items()}
        for index, name in enumerate(names.numpy()):
            done.add(name.decode())
            yield name.decode(), {k: v[index] for k, v in found.items()}
    bad.update({path: reason(path) for path in paths if path not in done})


def describe(task: Task, prediction: dict[str, np.ndarray]) -> dict:
    """One image's prediction as JSON: the top classes; the boxes scoring at least the task's
    `draw_confidence`; or the share of the image each class covers."""
    names = task.class_names
    if task.name == "classification":
        top = [{"class": names[c], "score": float(s)} for c, s in zip(prediction["classes"], prediction["scores"])]
        return {"class": top[0]["class"], "score": top[0]["score"], "top_k": top}
    if task.name == "detection":
        shown = (prediction["classes"] >= 0) & (prediction["scores"] >= task.draw_confidence)
        return {"detections": [{"class": names[c], "score": float(s), "box": [round(float(v), 1) for v in box]}
                               for c, s, box in zip(prediction["classes"][shown], prediction["scores"][shown],
                                                    prediction["boxes"][shown])]}
    mask = _mask(prediction)
    return {"classes": {names[c]: float(np.mean(mask == c)) for c in np.unique(mask)}}


def _mask(prediction: dict[str, np.ndarray]) -> np.ndarray:
    height, width = prediction["original_size"]
    return prediction["mask"][:height, :width]


def _csv_rows(task: Task, name: str, described: dict) -> list[dict]:
    if task.name == "classification":
        return [{"file": name, "class": described["class"], "score": f"{described['score']:.4f}",
                 "top_k": "; ".join(f"{t['class']} {t['score']:.4f}" for t in described["top_k"])}]
    if task.name == "detection":
        return [{"file": name, "class": d["class"], "score": f"{d['score']:.4f}",
                 **dict(zip(("x0", "y0", "x1", "y1"), d["box"]))} for d in described["detections"]] or [{"file": name}]
    return [{"file": name, "mask": described["mask"],
             "classes": "; ".join(f"{c} {share:.4f}" for c, share in described["classes"].items())}]


def draw(task: Task, image: np.ndarray, prediction: dict[str, np.ndarray]) -> np.ndarray:
    """The original `image` with its prediction drawn: top classes, boxes with names and scores, or the mask
    with a legend."""
    names = task.class_names
    factor = -(-DRAWN_SIDE // max(image.shape[:2]))  # small images are enlarged to be readable
    image = drawing.enlarged(image, factor)
    if task.name == "classification":
        return drawing.caption(image, [f"{names[c]} {s:.2f}" for c, s in zip(prediction["classes"],
                                                                            prediction["scores"])])
    if task.name == "detection":
        shown = (prediction["classes"] >= 0) & (prediction["scores"] >= task.draw_confidence)
        return drawing.draw_boxes(image, prediction["boxes"][shown] * factor, prediction["classes"][shown],
                                  prediction["scores"][shown], names)
    return drawing.overlay_mask(image, drawing.enlarged(_mask(prediction), factor), names)


def _common_folder(paths: list[str]) -> str:
    """The deepest folder, as written ("gs://b/images/", "" for none), that holds every one of `paths`."""
    prefix = os.path.commonprefix([path[:path.rfind("/") + 1] for path in paths])
    return prefix[:prefix.rfind("/") + 1]


def _output_name(path: str, root: str) -> str:
    """A file name for `path`'s outputs: its path under the images' common folder `root`, "/" as "__"."""
    return os.path.splitext(path[len(root):])[0].replace("/", "__")


def write_outputs(output: str, task: Task, results: list[tuple[str, dict]], bad: dict[str, str], root: str) -> dict:
    """Writes predictions.json, predictions.csv, drawn/*.jpg (and masks/*.png) into `output`; returns the
    summary (also in predictions.json): counts of the predicted classes and the files left out."""
    for folder in ("drawn", "masks") if task.name == "segmentation" else ("drawn",):
        tf.io.gfile.makedirs(os.path.join(output, folder))
    entries, rows, counts = [], [], dict.fromkeys(task.class_names, 0)
    for path, prediction in results:
        name = _output_name(path, root)
        described = describe(task, prediction)
        if task.name == "segmentation":
            described["mask"] = os.path.join("masks", name + ".png")
            tf.io.write_file(os.path.join(output, described["mask"]),
                             tf.io.encode_png(_mask(prediction).astype(np.uint8)[..., None]))
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()
        tf.io.write_file(os.path.join(output, "drawn", name + ".jpg"),
                         tf.io.encode_jpeg(draw(task, image, prediction), quality=90))
        for counted in ([described["class"]] if "class" in described else
                        [d["class"] for d in described.get("detections", [])] or list(described.get("classes", {}))):
            counts[counted] += 1
        entries.append({"file": path, **described})
        rows += _csv_rows(task, path, described)
    title = {"classification": "images per top class", "detection": "boxes per class (score >= "
             f"{getattr(task, 'draw_confidence', 0)})", "segmentation": "images showing each class"}[task.name]
    summary = {"images": len(results), "left_out": bad, "counts_title": title, "counts": counts, "output": output}
    files.write_json(os.path.join(output, "predictions.json"),
                     {"task": task.name, "class_names": task.class_names, **summary, "predictions": entries}, indent=1)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    files.write_file(os.path.join(output, "predictions.csv"), table.getvalue())
    return summary
