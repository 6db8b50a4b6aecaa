"""COCO mAP of a detector over the whole validation set, computed by pycocotools outside the graph.

Ground truth and detections travel as COCO JSON (image ids 1..N in validation order, category id = class + 1,
boxes [x, y, w, h] in the pixels of the original image), so the numbers here are pycocotools' own and the
exported files (`val_detections.json`, `val_ground_truth.json`) reproduce them with pycocotools alone.
`DetectionEvaluator` adds them to every validated epoch's logs: val_map50, val_map50_95, val_precision,
val_recall (at the confidence of best F1, IoU 0.5) and val_ap50_<class>.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from datasets.ops import spatial
from engine import files


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of boxes (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4)[:, None], np.asarray(b, np.float32).reshape(-1, 4)[None]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def coco_ground_truth(images: list[dict], class_names: list[str]) -> dict:
    """A COCO instances dict from per-image {"file_name", "height", "width", "boxes" [n, 4] x0 y0 x1 y1,
    "classes" [n]}; image i gets id i + 1."""
    annotations = []
    for image_id, image in enumerate(images, start=1):
        for box, label in zip(_xywh(image["boxes"]), np.asarray(image["classes"]).reshape(-1)):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    return {
        "images": [{"id": i, "file_name": str(image["file_name"]), "height": int(image["height"]),
                    "width": int(image["width"])} for i, image in enumerate(images, start=1)],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(class_names)],
    }


def coco_results(detections: list[dict]) -> list[dict]:
    """COCO results (a list of {"image_id", "category_id", "bbox", "score"}) from per-image {"boxes" [n, 4]
    x0 y0 x1 y1, "scores" [n], "classes" [n]}; image i gets id i + 1."""
    results = []
    for image_id, found in enumerate(detections, start=1):
        for box, score, label in zip(_xywh(found["boxes"]), np.asarray(found["scores"]).reshape(-1),
                                     np.asarray(found["classes"]).reshape(-1)):
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(score), 5)})
    return results


def _best_f1(evaluation) -> tuple[float, float, float]:
    """Precision, recall and confidence where F1 is highest, over all classes at IoU 0.5 (COCO's matching)."""
    scores, matched, num_gt = [], [], 0
    all_area = evaluation.params.areaRng[0]
    for entry in evaluation.evalImgs:
        if entry is None or entry["aRng"] != all_area:
            continue
        num_gt += int(np.sum(np.asarray(entry["gtIgnore"]) == 0))
        keep = ~np.asarray(entry["dtIgnore"][0], bool)
        scores += list(np.asarray(entry["dtScores"])[keep])
        matched += list(np.asarray(entry["dtMatches"][0])[keep] > 0)
    if not scores or not num_gt:
        return 0.0, 0.0, 0.0
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    true_positives = np.cumsum(np.asarray(matched)[order])
    precision = true_positives / np.arange(1, len(order) + 1)
    recall = true_positives / num_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return float(precision[best]), float(recall[best]), float(np.asarray(scores)[order][best])


def coco_evaluation(ground_truth: dict, results: list[dict]):
    """pycocotools' COCOeval (bbox) of `results` against `ground_truth`, evaluated, accumulated and summarised;
    None when either is empty (pycocotools cannot load an empty result list)."""
    if not results or not ground_truth["annotations"]:
        return None
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = json.loads(json.dumps(ground_truth))
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(json.loads(json.dumps(results))), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def coco_map(ground_truth: dict, results: list[dict]) -> dict:
    """pycocotools' bbox evaluation: map50, map50_95, per-class AP, and precision/recall at best F1.
    No detections at all scores 0; classes without ground truth are left out of the per-class tables."""
    return coco_scores(ground_truth, coco_evaluation(ground_truth, results))


def coco_scores(ground_truth: dict, evaluation) -> dict:
    """`coco_map`'s numbers from `coco_evaluation(ground_truth, ...)` (None: 0 for every class with objects)."""
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if evaluation is None:
        zeros = {names[c]: 0.0 for c in sorted({a["category_id"] for a in ground_truth["annotations"]})}
        return {"map50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0, "confidence": 0.0,
                "per_class_ap50": zeros, "per_class_ap50_95": dict(zeros)}
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class] (area all, 100 detections)
    per_class_50, per_class_50_95 = {}, {}
    for k, category in enumerate(evaluation.params.catIds):
        at_50, at_all = precision[0, :, k], precision[:, :, k]
        if np.all(at_50 < 0):  # no ground truth of this class
            continue
        per_class_50[names[category]] = float(np.mean(at_50[at_50 > -1]))
        per_class_50_95[names[category]] = float(np.mean(at_all[at_all > -1]))
    best_precision, best_recall, confidence = _best_f1(evaluation)
    return {"map50": float(evaluation.stats[1]), "map50_95": float(evaluation.stats[0]),
            "precision": best_precision, "recall": best_recall, "confidence": confidence,
            "per_class_ap50": per_class_50, "per_class_ap50_95": per_class_50_95}


def detector(model: keras.Model):
    """`model` (a keras-cv YOLOV8Detector) with its non-max suppression, as one compiled function of letterboxed
    images and their original [h, w]: boxes in the original images' pixels."""

    @tf.function
    def detect(images, original_size):
        found = model.decode_predictions(model(images, training=False), images)
        return {**found, "boxes": spatial.unletterbox_boxes(found["boxes"], original_size, images.shape[1])}

    return detect


def predict_split(detect, dataset: tf.data.Dataset) -> tuple[list[dict], list[dict]]:
    """Runs `detect` (`detector(model)`) over evaluation batches ("image", "boxes", "classes", "weight", "id",
    "original_size"); returns per-image ground truth and detections in the original images' pixels, padding
    examples left out."""
    truth, found = [], []
    for batch in dataset:
        predicted = {k: v.numpy() for k, v in detect(batch["image"], batch["original_size"]).items()}
        true_boxes = spatial.unletterbox_boxes(batch["boxes"], batch["original_size"], batch["image"].shape[1])
        batch = {k: v.numpy() for k, v in batch.items() if k != "image"}
        for i in np.flatnonzero(batch["weight"] > 0):
            real = batch["classes"][i] >= 0
            count = int(predicted["num_detections"][i])
            height, width = batch["original_size"][i]
            truth.append({"file_name": batch["id"][i].decode(), "height": height, "width": width,
                          "boxes": true_boxes[i].numpy()[real], "classes": batch["classes"][i][real]})
            found.append({"boxes": predicted["boxes"][i][:count], "scores": predicted["confidence"][i][:count],
                          "classes": predicted["classes"][i][:count]})
    return truth, found


class DetectionEvaluator(keras.callbacks.Callback):
    """After every validated epoch, COCO mAP of the model on the whole validation set, into the epoch's logs
    (as val_map50, val_map50_95, val_precision, val_recall, val_ap50_<class>); at the end of training, the
    last epoch's detections and ground truth as COCO JSON in `output_dir` (if given)."""

    def __init__(self, dataset_fn, class_names: list[str], output_dir: str | None = None):
        super().__init__()
        self.dataset_fn = dataset_fn
        self.class_names = class_names
        self.output_dir = output_dir
        self.last: tuple[dict, list[dict]] | None = None
        self._detectors: dict[int, object] = {}  # by model: traced once, not every epoch

    def evaluate(self, model: keras.Model) -> dict:
        """The metrics (val_ prefixed, per-class AP50 flattened) of `model` on the validation set."""
        if id(model) not in self._detectors:
            self._detectors[id(model)] = detector(model)
        detect = self._detectors[id(model)]
        truth, found = predict_split(detect, self.dataset_fn())
        ground_truth, results = coco_ground_truth(truth, self.class_names), coco_results(found)
        self.last = (ground_truth, results)
        scores = coco_map(ground_truth, results)
        logs = {f"val_{key}": scores[key] for key in ("map50", "map50_95", "precision", "recall")}
        logs.update({f"val_ap50_{name}": value for name, value in scores["per_class_ap50"].items()})
        return logs | {"val_per_class_ap50": scores["per_class_ap50"],
                       "val_per_class_ap50_95": scores["per_class_ap50_95"]}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_loss" not in logs:
            return
        logs.update({k: v for k, v in self.evaluate(self.model).items() if not isinstance(v, dict)})

    def on_train_end(self, logs=None):
        if self.output_dir and self.last:
            write_coco_json(self.output_dir, *self.last)


def write_coco_json(directory: str, ground_truth: dict, results: list[dict]) -> None:
    """Writes `directory`/val_ground_truth.json (COCO instances) and val_detections.json (COCO results)."""
    tf.io.gfile.makedirs(directory)
    for name, content in (("val_ground_truth.json", ground_truth), ("val_detections.json", results)):
        files.write_json(os.path.join(directory, name), content)
