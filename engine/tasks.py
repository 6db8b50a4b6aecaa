"""Tasks: the single-replica view of a problem (model, loss, metrics, label decoding).

A task knows nothing of strategies, loops or files; the engine (`engine/train.py`) runs any task the same
way. Segmentation and detection join `TASKS` with their own classes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from datasets.augment import Augment
from datasets.sources import Source
from engine.config import Config, FlagError
from models import classification


def _given(value, default):
    return default if value is None else value


class ClassificationTask:
    """Image-level labels, softmax cross-entropy, accuracy."""

    name = "classification"
    kind = "classification"  # the labels the pipeline decodes (datasets/augment.py KINDS)
    best_metric = "val_accuracy"  # the validation metric that picks the best checkpoint (higher is better)

    def __init__(self, source: Source, config: Config):
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

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """Maps a pipeline batch to what `Model.fit` consumes: (inputs, class probabilities[, sample weights])."""
        label = batch["label"]
        if not label.dtype.is_floating:  # integer labels; MixUp/CutMix batches are already probabilities
            label = tf.one_hot(label, self.num_classes)
        if "weight" in batch:  # evaluation batches: padding examples weigh 0
            return batch["image"], label, batch["weight"]
        return batch["image"], label


TASKS = {"classification": ClassificationTask}


def make_task(config: Config, source: Source) -> ClassificationTask:
    """The task `config.task` for the classes of `source`."""
    if config.task not in TASKS:
        raise FlagError(f"--task={config.task} is unknown; choose one of {', '.join(TASKS)}")
    return TASKS[config.task](source, config)
