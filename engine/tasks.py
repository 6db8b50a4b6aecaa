"""Tasks: the single-replica view of a problem (model, loss, metrics, label decoding).

A task knows nothing of strategies, loops or files; the engine (`engine/train.py`) runs any task the same
way. A task names its `kind` of labels for the pipeline, builds its model, gives `model.compile` its losses
and metrics (`compile_args`), may add evaluators run after each validated epoch (detection's COCO mAP) and
may `draw` its predictions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from datasets import box_sources, preview
from datasets.augment import Augment
from datasets.sources import Source
from engine import detection_metrics, segmentation_metrics
from engine.config import Config, FlagError
from models import classification, detection, segmentation


def _given(value, default):
    return default if value is None else value


class ClassificationTask:
    """Image-level labels, softmax cross-entropy, accuracy."""

    name = "classification"
    kind = "classification"  # the labels the pipeline decodes (datasets/augment.py KINDS)
    best_metric = "val_accuracy"  # the validation metric that picks the best checkpoint (higher is better)
    max_boxes = 0

    def __init__(self, source: Source, config: Config):
        if not source.image_labels:
            raise FlagError(f"--task=classification needs image labels; --dataset={config.dataset} has boxes only")
        self.class_names = source.class_names
        self.num_classes = source.num_classes
        self.large_model = config.model in classification.LARGE
        self.label_smoothing = _given(config.label_smoothing, 0.1 if self.large_model else 0.0)

    def augment(self, config: Config) -> Augment:
        """Training augmentation: the flags, else defaults by model size. Small models (the default small_cnn,
        resnet, mobilenet_v3_small) get crop, flip and mild colour jitter; large ones (models.classification.LARGE)
        RandAugment 2x9, MixUp 0.2 / CutMix 1.0 and label smoothing 0.1, as ImageNet recipes use."""
        jitter = _given(config.color_jitter, 0.0 if self.large_model else 0.2)
        return Augment(
            flip=config.flip, brightness=jitter, contrast=jitter, saturation=jitter, hue=_given(config.hue, 0.0),
            randaugment_ops=_given(config.randaugment_ops, 2 if self.large_model else 0),
            randaugment_magnitude=config.randaugment_magnitude,
            mixup=_given(config.mixup, 0.2 if self.large_model else 0.0),
            cutmix=_given(config.cutmix, 1.0 if self.large_model else 0.0),
            num_classes=self.num_classes)

    def build_model(self, model_name: str, image_size: int, weights: str | None = None) -> keras.Model:
        """The classifier `model_name` with one logit per class."""
        return classification.build_classifier(model_name, self.num_classes, image_size, weights or None)

    def loss(self) -> keras.losses.Loss:
        """Cross-entropy on class-probability labels (one-hot, or mixed by MixUp/CutMix) and float32 logits,
        with label smoothing, averaged over weighted (real) examples.

        Metrics are exact over padded evaluation batches; Keras averages this loss per batch, so val_loss
        weighs the last, partly padded, batch like a full one.
        """
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.label_smoothing,
                                                    reduction="mean_with_sample_weight")

    def metrics(self) -> list[keras.metrics.Metric]:
        """Top-1 accuracy, and top-5 when there are more than 10 classes (compiled as weighted metrics)."""
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if self.num_classes > 10:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        return metrics

    def compile_args(self, metrics: list[keras.metrics.Metric]) -> dict:
        """The loss and metric arguments of `model.compile` (metrics weighted: padding examples weigh 0)."""
        return {"loss": self.loss(), "weighted_metrics": metrics}

    def evaluators(self, dataset_fn, output_dir: str | None) -> list[keras.callbacks.Callback]:
        """Evaluations outside the compiled metrics: none."""
        return []

    def summary(self, logs: dict) -> dict:
        """Nothing beyond the epoch logs."""
        return {}

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """Maps a pipeline batch to what `Model.fit` consumes: (inputs, class probabilities[, sample weights])."""
        label = batch["label"]
        if not label.dtype.is_floating:  # integer labels; MixUp/CutMix batches are already probabilities
            label = tf.one_hot(label, self.num_classes)
        if "weight" in batch:  # evaluation batches: padding examples weigh 0
            return batch["image"], label, batch["weight"]
        return batch["image"], label


class SegmentationTask:
    """Per-pixel labels from class-index masks: cross-entropy (+ Dice) over labelled pixels, mean IoU."""

    name = "segmentation"
    kind = "segmentation"
    best_metric = "val_mean_iou"
    max_boxes = 0
    compile_args = ClassificationTask.compile_args
    evaluators = ClassificationTask.evaluators

    def __init__(self, source: Source, config: Config):
        if not source.mask_class_names:
            raise FlagError(f"--task=segmentation needs masks; --dataset={config.dataset} has none")
        self.class_names = source.mask_class_names
        self.num_classes = len(self.class_names)
        self.ignore_value = config.ignore_value
        self.large_model = config.model in segmentation.LARGE
        self.dice_weight = config.dice_weight or 0.0
        self.class_weights = [float(w) for w in config.class_weights] if config.class_weights else None
        if self.class_weights and len(self.class_weights) != self.num_classes:
            raise FlagError(f"--class_weights has {len(self.class_weights)} values for {self.num_classes} "
                            f"mask classes ({', '.join(self.class_names)})")

    def augment(self, config: Config) -> Augment:
        """Zoom 0.75-1.5 (0.5-2 for deeplabv3plus), shift, flip of image and mask; colour jitter 0.2."""
        jitter = _given(config.color_jitter, 0.2)
        return Augment(flip=config.flip, brightness=jitter, contrast=jitter, saturation=jitter,
                       hue=_given(config.hue, 0.0),
                       scale=(_given(config.min_scale, 0.5 if self.large_model else 0.75),
                              _given(config.max_scale, 2.0 if self.large_model else 1.5)))

    def build_model(self, model_name: str, image_size: int, weights: str | None = None) -> keras.Model:
        """The segmentation model `model_name` with one logit per mask class."""
        return segmentation.build_segmenter(model_name, self.num_classes, image_size, weights or None)

    def loss(self) -> keras.losses.Loss:
        """Cross-entropy over labelled pixels (+ Dice), per-class weighted."""
        return segmentation_metrics.SegmentationLoss(self.num_classes, self.dice_weight, self.class_weights)

    def metrics(self) -> list[keras.metrics.Metric]:
        """Mean IoU over the whole split (its `details()`: per-class IoU, pixel accuracy); call in the
        strategy's scope."""
        return [segmentation_metrics.ConfusionMatrix(self.num_classes, self.class_names)]

    def summary(self, logs: dict) -> dict:
        """`val_per_class_iou` {class: IoU} from the last epoch's logs."""
        return {"val_per_class_iou": {name: logs.get(f"val_iou_{name}") for name in self.class_names}}

    def predict(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        """Per-pixel logits."""
        return np.asarray(model(images, training=False))

    def draw(self, batch: dict, logits: np.ndarray) -> np.ndarray:
        """Validation images tinted by their true mask (left) and by the predicted one (right)."""
        predicted = {"image": batch["image"], "mask": np.argmax(logits, axis=-1)[..., None].astype(np.uint8)}
        return np.concatenate([preview.draw(batch, self.ignore_value), preview.draw(predicted, self.ignore_value)],
                              axis=2)

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """(image, packed target): class index and pixel weight, 0 for ignored pixels and padding examples."""
        mask = tf.cast(batch["mask"][..., 0], tf.int32)
        counted = mask != self.ignore_value  # the pipeline stops at any other value >= num_classes
        weight = tf.cast(counted, tf.float32)
        if "weight" in batch:
            weight *= batch["weight"][:, None, None]
        label = tf.cast(tf.where(counted, mask, 0), tf.float32)
        return batch["image"], tf.stack([label, weight], axis=-1)


class DetectionTask:
    """Boxes: a keras-cv YOLOv8 (CIoU + BCE losses, task-aligned assignment), scored by COCO mAP."""

    name = "detection"
    kind = "detection"
    best_metric = "val_map50"
    draw_confidence = 0.25  # drawn predictions score at least this

    def __init__(self, source: Source, config: Config):
        if not source.box_class_names:
            raise FlagError(f"--task=detection needs boxes; --dataset={config.dataset} has none")
        self.class_names = source.box_class_names
        self.num_classes = len(self.class_names)
        self.large_model = config.model in detection.LARGE
        self.nms_iou, self.nms_confidence = config.nms_iou, config.nms_confidence
        self.mosaic = _given(config.mosaic, 1.0 if self.large_model else 0.5)
        # Mosaic and MixUp keep the first max_boxes boxes of the images they join: room for all of them.
        most = max(box_sources.most_boxes(split) for split in source.splits.values())
        self.max_boxes = config.max_boxes or max(1, most * (4 if self.mosaic else 1) * (2 if config.box_mixup else 1))

    def augment(self, config: Config) -> Augment:
        """YOLO's recipe: HSV-style jitter, zoom 0.5-1.5, shift 0.1, flip, Mosaic (every example for large
        models, half of them for the small default), MixUp off unless asked."""
        return Augment(flip=config.flip, brightness=_given(config.color_jitter, 0.4),
                       saturation=_given(config.color_jitter, 0.7), hue=_given(config.hue, 0.015),
                       scale=(_given(config.min_scale, 0.5), _given(config.max_scale, 1.5)), translate=0.1,
                       mosaic=self.mosaic, box_mixup=config.box_mixup)

    def build_model(self, model_name: str, image_size: int, weights: str | None = None) -> keras.Model:
        """The YOLOv8 `model_name` with this task's non-max suppression settings."""
        return detection.build_detector(model_name, self.num_classes, image_size, weights or None,
                                        self.nms_iou, self.nms_confidence)

    def compile_args(self, metrics: list) -> dict:
        """keras-cv YOLOv8's losses: CIoU for boxes, binary cross-entropy for classes (mAP is computed by
        `evaluators`, not compiled)."""
        return {"box_loss": "ciou", "classification_loss": "binary_crossentropy"}

    def metrics(self) -> list:
        """None compiled: mAP needs the whole split (`evaluators`)."""
        return []

    def evaluators(self, dataset_fn, output_dir: str | None) -> list[keras.callbacks.Callback]:
        """COCO mAP by pycocotools after every validated epoch (`engine/detection_metrics.py`)."""
        return [detection_metrics.DetectionEvaluator(dataset_fn, self.class_names, output_dir)]

    def summary(self, logs: dict) -> dict:
        """`val_per_class_ap50` {class: AP50} from the last epoch's logs."""
        return {"val_per_class_ap50": {name: logs.get(f"val_ap50_{name}") for name in self.class_names}}

    def predict(self, model: keras.Model, images: np.ndarray) -> dict:
        """Boxes, confidences and classes after non-max suppression."""
        found = model.decode_predictions(model(images, training=False), images)
        return {k: np.asarray(v) for k, v in found.items()}

    def draw(self, batch: dict, found: dict) -> np.ndarray:
        """Validation images with their true boxes (left) and the predicted ones scoring at least
        `draw_confidence` (right)."""
        shown = (found["confidence"] >= self.draw_confidence) & (found["classes"] >= 0)
        predicted = {"image": batch["image"], "boxes": found["boxes"],
                     "classes": np.where(shown, found["classes"], -1).astype(np.int32)}
        truth = {"image": batch["image"], "boxes": batch["boxes"], "classes": batch["classes"]}
        return np.concatenate([preview.draw(truth), preview.draw(predicted)], axis=2)

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """(image, {"boxes", "classes"}) as keras-cv wants them: padding boxes are -1. Evaluation's zero-weight
        padding images count in val_loss as images without objects (mAP leaves them out)."""
        real = batch["classes"] >= 0
        return batch["image"], {"boxes": tf.where(real[..., None], batch["boxes"], -1.0),
                                "classes": tf.cast(batch["classes"], tf.float32)}


TASKS = {"classification": ClassificationTask, "segmentation": SegmentationTask, "detection": DetectionTask}
# Flags left unset take these per-task values, measured on the shapes default: segmentation with Dice and
# 3e-3 passes 0.85 mean IoU at epoch 11 (without them it learns two shapes in the same time); detection at
# 128 px (the data's own size, objects 13-86 px) passes 0.8 mAP50 at epoch 6 of 18 (~50 s per epoch here).
TASK_DEFAULTS = {
    "classification": {"model": "small_cnn", "epochs": 15, "learning_rate": 1e-3, "image_size": 64},
    "segmentation": {"model": "unet", "epochs": 20, "learning_rate": 3e-3, "dice_weight": 1.0, "image_size": 64},
    "detection": {"model": "yolov8_n", "epochs": 15, "learning_rate": 2e-3, "image_size": 128},
}


def fill_defaults(config: Config) -> None:
    """Sets the flags left unset (None) to the task's defaults."""
    for field, value in TASK_DEFAULTS.get(config.task, {}).items():
        if getattr(config, field) is None:
            setattr(config, field, value)


def make_task(config: Config, source: Source) -> ClassificationTask | SegmentationTask | DetectionTask:
    """The task `config.task` for the classes of `source`."""
    if config.task not in TASKS:
        raise FlagError(f"--task={config.task} is unknown; choose one of {', '.join(TASKS)}")
    return TASKS[config.task](source, config)
