"""Detection: boxes, keras-cv YOLOv8 (CIoU + BCE losses, task-aligned assignment), scored by COCO mAP from
pycocotools after every validated epoch (`engine/detection_metrics.py`)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from datasets import preview
from datasets.ops import spatial
from datasets.profile import Profile
from datasets.recipes import Augment, DetectionRecipe
from datasets.sources.base import Source, Targets
from engine import detection_metrics, plan
from engine.config import Config, FlagError
from engine.reports import detection as detection_report
from engine.tasks.base import Task
from models import detection


class DetectionTask(Task):
    """Boxes: a keras-cv YOLOv8 (CIoU + BCE losses, task-aligned assignment), scored by COCO mAP."""

    name = "detection"
    default_model = "yolov8_n"
    best_metric = "val_map50"
    per_class = ("ap50", "AP50")
    draws_overlays = True
    draw_confidence = 0.25  # drawn predictions score at least this
    match_iou = 0.9  # export parity: a box matches one of the same class overlapping it this much
    parity_limits = {"matched_boxes": (">=", {"float32": 0.98, "float16": 0.9, "int8": 0.75})}
    min_steps = 1875  # yolov8_n on the shapes data: val_map50 0.91 (15 epochs of 125 steps)
    object_px = 16  # the smallest objects' side at the input: two cells of YOLOv8's finest (stride 8) level
    kept_px = 6  # zoom-out and Mosaic tiles (half size) must not shrink the smallest objects below this
    size_budget = 640

    @classmethod
    def defaults(cls, model: str) -> dict[str, object]:
        """YOLO's recipe at 128 px (the shapes data's own size, objects 13-86 px: passes 0.8 mAP50 at epoch 6
        of 18, measured): HSV-style jitter (--color_jitter unset: brightness 0.4, saturation 0.7), zoom
        0.5-1.5, flip, Mosaic for every example for large models and half of them for the small default."""
        return {"learning_rate": 2e-3, "hue": 0.015, "min_scale": 0.5, "max_scale": 1.5,
                "mosaic": 1.0 if model in detection.LARGE else 0.5, "ema_decay": 0.0, "warmup_epochs": 1.0}

    @classmethod
    def planned(cls, config: Config, profile: Profile) -> dict[str, tuple[object, str]]:
        """The input size at which the smallest objects keep `object_px` pixels; zoom-out and Mosaic (which
        halves its tiles) only as far as they keep `kept_px`."""
        size, why = plan.object_size(profile, cls.object_px, detection.STRIDE, cls.size_budget)
        found = {"image_size": (size, why)}
        smallest = (profile.smallest_object or 1.0) * (config.image_size or size)
        if smallest * 0.5 < cls.kept_px:  # the default zoom-out (0.5) and Mosaic tiles halve objects
            found["min_scale"] = (min(1.0, round(cls.kept_px / smallest, 2)),
                                  f"zoom-out keeps the smallest objects ({smallest:.0f} px) at {cls.kept_px} px or more")
            found["mosaic"] = (0.0, f"Mosaic's half-size tiles would shrink the smallest objects ({smallest:.0f} px) "
                                    f"below {cls.kept_px} px")
        return found

    @classmethod
    def profile_targets(cls, source: Source) -> Targets:
        """Boxes: the smallest objects are the smallest boxes."""
        return Targets(max_boxes=max(1, max(split.most_boxes() for split in source.splits.values())))

    @classmethod
    def class_names_of(cls, source: Source, config: Config) -> list[str]:
        """The box classes' names."""
        if not source.box_class_names:
            raise FlagError(f"--task=detection needs boxes; --dataset={config.dataset} has none")
        return source.box_class_names

    @classmethod
    def from_source(cls, config: Config, source: Source) -> DetectionTask:
        """The task with --max_boxes, when 0, from the data: the most boxes in one image, times 4 with Mosaic
        and 2 with MixUp (they keep the first max_boxes boxes of the images they join: room for all)."""
        if not config.max_boxes:
            most = max(split.most_boxes() for split in source.splits.values())
            config = dataclasses.replace(config, max_boxes=max(1, most * (4 if config.mosaic else 1)
                                                                  * (2 if config.box_mixup else 1)))
        return super().from_source(config, source)

    def augment(self) -> Augment:
        """HSV-style jitter, zoom, shift 0.1, flip, Mosaic, MixUp."""
        config = self.config
        jitter = config.color_jitter
        return Augment(flip=config.flip, brightness=0.4 if jitter is None else jitter,
                       saturation=0.7 if jitter is None else jitter, hue=config.hue,
                       scale=(config.min_scale, config.max_scale), translate=0.1, mosaic=config.mosaic,
                       box_mixup=config.box_mixup)

    def recipe(self, training: bool) -> DetectionRecipe:
        """Letterbox, boxes padded to --max_boxes; augmentation for training."""
        return DetectionRecipe(self.config.image_size, self.augment() if training else Augment(),
                               self.config.max_boxes, self.dct_ratios(training))

    def build_model(self) -> keras.Model:
        """The YOLOv8 --model with --nms_iou and --nms_confidence non-max suppression."""
        config = self.config
        return detection.build_detector(config.model, self.num_classes, config.image_size, config.nms_iou,
                                        config.nms_confidence)

    def backbone_layers(self, model: keras.Model) -> list[keras.layers.Layer]:
        """The YOLOv8 backbone."""
        return detection.backbone_layers(model)

    def compile_args(self) -> dict:
        """keras-cv YOLOv8's losses: CIoU for boxes, binary cross-entropy for classes (mAP is computed by
        `evaluators`, not compiled)."""
        return {"box_loss": "ciou", "classification_loss": "binary_crossentropy"}

    def evaluators(self, dataset_fn, output_dir: str | None) -> list[keras.callbacks.Callback]:
        """COCO mAP by pycocotools after every validated epoch (`engine/detection_metrics.py`)."""
        return [detection_metrics.DetectionEvaluator(dataset_fn, self.class_names, output_dir)]

    def predict(self, model: keras.Model, images: np.ndarray) -> dict:
        """Boxes, confidences and classes after non-max suppression."""
        found = model.decode_predictions(model(images, training=False), images)
        return {k: np.asarray(v) for k, v in found.items()}

    def draw(self, batch: dict, found: dict) -> np.ndarray:
        """Validation images with their true boxes named by class (left) and the predicted ones scoring at least
        `draw_confidence`, named by class and score (right)."""
        shown = (found["confidence"] >= self.draw_confidence) & (found["classes"] >= 0)
        predicted = {"image": batch["image"], "boxes": found["boxes"], "scores": found["confidence"],
                     "classes": np.where(shown, found["classes"], -1).astype(np.int32)}
        truth = {"image": batch["image"], "boxes": batch["boxes"], "classes": batch["classes"]}
        return np.concatenate([preview.draw(truth, self.class_names), preview.draw(predicted, self.class_names)],
                              axis=2)

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """(image, {"boxes", "classes"}) as keras-cv wants them: padding boxes are -1. Evaluation's zero-weight
        padding images count in val_loss as images without objects (mAP leaves them out)."""
        real = batch["classes"] >= 0
        return batch["image"], {"boxes": tf.where(real[..., None], batch["boxes"], -1.0),
                                "classes": tf.cast(batch["classes"], tf.float32)}

    def serving_core(self, model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The head's outputs for every anchor: "distances" [B, anchors, 64] (4 sides x 16 distance bins, before
        their softmax) and class "scores" [B, anchors, classes]. Box decoding and non-max suppression are
        `serving_finish`'s: no TFLite builtin converts the suppression (keras-cv#2499), and decoding the bins
        in float keeps an int8 model's boxes sharp."""
        raw = model(images, training=False)
        return {"distances": tf.cast(raw["boxes"], tf.float32), "scores": tf.cast(raw["classes"], tf.float32)}

    def serving_finish(self, core: dict[str, tf.Tensor], original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """Boxes decoded from the distance bins and non-max suppression as in evaluation (--nms_iou,
        --nms_confidence; keras-cv's layer), back in original pixels: "boxes" [B, M, 4], "scores", "classes"
        (-1 pads), "names" ("" pads) [B, M] and "num_detections" [B]."""
        config = self.config
        boxes = detection.decode_boxes(core["distances"], config.image_size)
        found = detection.suppression(config.nms_iou, config.nms_confidence)(boxes, core["scores"])
        classes = tf.cast(found["classes"], tf.int32)
        real = classes >= 0
        boxes = spatial.unletterbox_boxes(found["boxes"], original_size, config.image_size)
        names = tf.gather(tf.constant(["", *self.class_names]), classes + 1)
        return {"boxes": tf.where(real[..., None], boxes, 0.0), "scores": tf.where(real, found["confidence"], 0.0),
                "classes": classes, "names": names, "num_detections": tf.cast(found["num_detections"], tf.int32)}

    def agreement(self, reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
        """The share of the boxes scoring at least `draw_confidence` (in either) that have a box of the same
        class in the other at IoU >= `match_iou` (scoring at least 0.8 x `draw_confidence`, so a score just
        across the line is not a miss)."""
        matched = total = 0
        for index in range(len(reference["boxes"])):
            one, two = ({k: v[index] for k, v in found.items()} for found in (reference, other))
            for shown, candidates in ((one, two), (two, one)):
                keep = (shown["classes"] >= 0) & (shown["scores"] >= self.draw_confidence)
                near = (candidates["classes"] >= 0) & (candidates["scores"] >= 0.8 * self.draw_confidence)
                overlap = detection_metrics.box_iou(shown["boxes"][keep], candidates["boxes"][near])
                same = shown["classes"][keep][:, None] == candidates["classes"][near][None, :]
                matched += int(np.sum(np.any((overlap >= self.match_iou) & same, axis=1)))
                total += int(np.sum(keep))
        return {"matched_boxes": matched / total if total else 1.0, "boxes_compared": float(total)}

    def report(self, model: keras.Model, dataset: tf.data.Dataset, folder: str) -> dict:
        """Precision-recall and F1-confidence curves and the detection confusion matrix
        (engine/reports/detection.py)."""
        return detection_report.write(model, dataset, self.class_names, folder)
