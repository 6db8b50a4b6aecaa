"""Segmentation: per-pixel labels from class-index masks, cross-entropy (+ Dice) over labelled pixels, mean IoU
over the whole validation split (`engine/segmentation_metrics.py`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from datasets import preview
from datasets.ops import spatial
from datasets.profile import Profile
from datasets.recipes import Augment, SegmentationRecipe
from datasets.sources.base import Source, Targets
from engine import plan, segmentation_metrics
from engine.config import Config, FlagError
from engine.reports import segmentation as segmentation_report
from engine.tasks.base import Task
from models import segmentation


class SegmentationTask(Task):
    """Per-pixel labels from class-index masks: cross-entropy (+ Dice) over labelled pixels, mean IoU."""

    name = "segmentation"
    default_model = "unet"
    best_metric = "val_mean_iou"
    min_steps = 2500  # the U-Net on the shapes data: val_mean_iou 0.91 (20 epochs of 125 steps)
    object_px = 6  # the smallest objects' side at the input: three pixels of the U-Net's stride-2 stem
    size_multiple = 16  # the U-Net's and DeepLabV3+'s coarsest stride
    size_budget = 512
    per_class = ("iou", "IoU")
    parity_limits = {"pixel_agreement": (">=", {"float32": 0.999, "float16": 0.99, "int8": 0.9})}
    draws_overlays = True

    def __init__(self, config: Config, class_names: list[str]):
        super().__init__(config, class_names)
        self.class_weights = [float(w) for w in config.class_weights] if config.class_weights else None
        if self.class_weights and len(self.class_weights) != self.num_classes:
            raise FlagError(f"--class_weights has {len(self.class_weights)} values for {self.num_classes} "
                            f"mask classes ({', '.join(self.class_names)})")

    @classmethod
    def defaults(cls, model: str) -> dict[str, object]:
        """Measured on the shapes default: with Dice and 3e-3 the U-Net passes 0.85 mean IoU at epoch 11
        (without them it learns two shapes in the same time). Zoom 0.75-1.5 (0.5-2 for deeplabv3plus)."""
        large = model in segmentation.LARGE
        return {"learning_rate": 3e-3, "dice_weight": 1.0, "color_jitter": 0.2,
                "hue": 0.0, "min_scale": 0.5 if large else 0.75, "max_scale": 2.0 if large else 1.5, "ema_decay": 0.0,
                "warmup_epochs": 1.0}

    @classmethod
    def planned(cls, config: Config, profile: Profile) -> dict[str, tuple[object, str]]:
        """The input size at which the smallest objects keep `object_px` pixels."""
        return {"image_size": plan.object_size(profile, cls.object_px, cls.size_multiple, cls.size_budget)}

    @classmethod
    def profile_targets(cls, source: Source) -> Targets:
        """Masks: the smallest objects are the smallest class areas."""
        return Targets(masks=True)

    @classmethod
    def class_names_of(cls, source: Source, config: Config) -> list[str]:
        """The mask classes' names, mask value i being class i."""
        if not source.mask_class_names:
            raise FlagError(f"--task=segmentation needs masks; --dataset={config.dataset} has none")
        return source.mask_class_names

    def augment(self) -> Augment:
        """Zoom, shift and flip of image and mask; colour jitter of the image."""
        config = self.config
        return Augment(flip=config.flip, brightness=config.color_jitter, contrast=config.color_jitter,
                       saturation=config.color_jitter, hue=config.hue, scale=(config.min_scale, config.max_scale))

    def recipe(self, training: bool) -> SegmentationRecipe:
        """Letterbox (mask padded with --ignore_value); augmentation for training."""
        return SegmentationRecipe(self.config.image_size, self.augment() if training else Augment(),
                                  self.config.ignore_value, self.num_classes, self.dct_ratios(training))

    def build_model(self) -> keras.Model:
        """The segmentation model --model with one logit per mask class."""
        config = self.config
        return segmentation.build_segmenter(config.model, self.num_classes, config.image_size)

    def backbone_layers(self, model: keras.Model) -> list[keras.layers.Layer]:
        """The encoder."""
        return segmentation.backbone_layers(model)

    def compile_args(self) -> dict:
        """Cross-entropy over labelled pixels (+ Dice), per-class weighted; mean IoU over the whole split (its
        `details()`: per-class IoU, pixel accuracy)."""
        return {"loss": segmentation_metrics.SegmentationLoss(self.num_classes, self.config.dice_weight,
                                                              self.class_weights),
                "weighted_metrics": [segmentation_metrics.ConfusionMatrix(self.num_classes, self.class_names)]}

    def draw(self, batch: dict, logits: np.ndarray) -> np.ndarray:
        """Validation images tinted by their true mask (left) and by the predicted one (right), the pixels that
        are not scored (ignored, letterbox padding) darkened on both, each pair above a legend of their classes."""
        ignore = self.config.ignore_value
        masks = np.where(batch["mask"] == ignore, ignore, np.argmax(logits, axis=-1)[..., None])
        pairs = np.concatenate([preview.draw(batch, self.class_names, ignore),
                                preview.draw({"image": batch["image"], "mask": masks}, self.class_names, ignore)],
                               axis=2)
        return preview.with_legends(pairs, list(zip(batch["mask"], masks)), self.class_names, ignore)

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """(image, packed target): class index and pixel weight, 0 for ignored pixels and padding examples."""
        mask = tf.cast(batch["mask"][..., 0], tf.int32)
        counted = mask != self.config.ignore_value  # the pipeline stops at any other value >= num_classes
        weight = tf.cast(counted, tf.float32)
        if "weight" in batch:
            weight *= batch["weight"][:, None, None]
        label = tf.cast(tf.where(counted, mask, 0), tf.float32)
        return batch["image"], tf.stack([label, weight], axis=-1)

    def serving_core(self, model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Class probabilities per pixel [B, S, S, classes]."""
        return {"probabilities": tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))}

    def serving_finish(self, core: dict[str, tf.Tensor], original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """"mask": class indices int32 [B, H, W] at each original size (the most likely class at the input
        size, its letterbox window scaled back by nearest neighbour), -1 beyond an image smaller than the
        batch's largest; and "original_size" [B, 2] to crop each."""
        size = self.config.image_size
        classes = tf.argmax(core["probabilities"], axis=-1, output_type=tf.int32)[..., None]
        height, width = tf.reduce_max(original_size[:, 0]), tf.reduce_max(original_size[:, 1])

        def to_original(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            mask, original = args
            new_h, new_w, top, left = (tf.cast(v, tf.int32) for v in spatial.letterbox_frame(original, size))
            window = mask[top:top + new_h, left:left + new_w]
            mask = tf.image.resize(window, original, method="nearest")[..., 0]
            return tf.pad(mask + 1, [[0, height - original[0]], [0, width - original[1]]]) - 1

        masks = tf.map_fn(to_original, (classes, tf.cast(original_size, tf.int32)),
                          fn_output_signature=tf.TensorSpec([None, None], tf.int32))
        return {"mask": masks, "original_size": tf.cast(original_size, tf.int32)}

    def agreement(self, reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
        """The share of image pixels (not batch padding) given the same class."""
        inside = reference["mask"] >= 0
        return {"pixel_agreement": float(np.mean(reference["mask"][inside] == other["mask"][inside]))}

    def report(self, model: keras.Model, dataset: tf.data.Dataset, folder: str) -> dict:
        """The pixel confusion matrix and per-class IoU (engine/reports/segmentation.py)."""
        return segmentation_report.write(model, dataset, self.class_names, folder, self.config.ignore_value)
