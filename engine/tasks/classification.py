"""Classification: image-level labels, softmax cross-entropy, accuracy."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from datasets.profile import Profile
from datasets.recipes import Augment, ClassificationRecipe
from datasets.sources.base import Source
from engine.config import Config, FlagError
from engine.reports import classification as classification_report
from engine.tasks.base import Task
from models import classification


class ClassificationTask(Task):
    """Image-level labels, softmax cross-entropy, accuracy."""

    name = "classification"
    default_model = "small_cnn"
    best_metric = "val_accuracy"
    top_k = 5  # serving returns the top 5 classes (all of them when there are fewer)
    parity_limits = {"top1_agreement": (">=", {"float32": 0.99, "float16": 0.98, "int8": 0.9}),
                     "max_probability_difference": ("<=", {"float32": 1e-3, "float16": 0.02, "int8": 0.25})}
    min_steps = 1875  # small_cnn on the shapes data: val_accuracy 0.98-0.99 (15 epochs of 125 steps)
    size_budget = 64  # the input size on a CPU; smaller images keep their own size
    tiny = 32  # images this small or smaller get mild crops

    @classmethod
    def defaults(cls, model: str) -> dict[str, object]:
        """Small models (small_cnn, resnet, mobilenet_v3_small) get flips of the whole image only: random
        crops (area 50-100%) and colour jitter 0.2 made small_cnn reach 0.95 on the shapes 2-4 epochs later
        and end lower (benchmarks/time_to_accuracy.py, BUILD.md); and a warmup of 0.2 epochs, which took
        small_cnn's val accuracy after 5 shapes epochs from 0.918-0.981 to 0.965-0.973 (3 seeds). Large ones
        (models.classification.LARGE) get crops, RandAugment 2x9, MixUp 0.2 / CutMix 1.0, label smoothing 0.1
        and a warmup of one epoch, as ImageNet recipes."""
        large = model in classification.LARGE
        return {"learning_rate": 1e-3, "warmup_epochs": 1.0 if large else 0.2, "min_crop_area": 0.5 if large else 1.0,
                "color_jitter": 0.0, "hue": 0.0, "randaugment_ops": 2 if large else 0, "mixup": 0.2 if large else 0.0,
                "cutmix": 1.0 if large else 0.0, "label_smoothing": 0.1 if large else 0.0}

    @classmethod
    def planned(cls, config: Config, profile: Profile) -> dict[str, tuple[object, str]]:
        """The images' own size up to `size_budget` (never upscaled); mild crops for tiny images (when the model
        crops at all); no colour jitter for grey ones; weights averaged over ~100 updates (EMA 0.99), evaluated
        and saved: Fashion-MNIST's val accuracy after 5 epochs went from 0.85 to 0.925, without the dips of the
        raw weights (BUILD.md); engine/plan.py drops it from short runs."""
        size = min(cls.size_budget, profile.shorter_side)
        found = {"image_size": (size, f"images {profile.height}x{profile.width} (median): " + (
            "their own size, not upscaled" if size == profile.shorter_side else f"the budget of {size} on a CPU"))}
        if profile.shorter_side <= cls.tiny and cls.defaults(config.model or cls.default_model)["min_crop_area"] < 0.85:
            found["min_crop_area"] = (0.85, f"images of {profile.shorter_side} px: crops keep most of the object")
        if profile.grey:
            found["color_jitter"] = (0.0, "grey images: colour jitter means nothing")
            found["hue"] = (0.0, "grey images")
        found["ema_decay"] = (0.99, "evaluate and save the weights averaged over ~100 optimizer updates")
        return found

    @classmethod
    def class_names_of(cls, source: Source, config: Config) -> list[str]:
        """The image labels' names; at least two."""
        if not source.image_labels:
            raise FlagError(f"--task=classification needs image labels; --dataset={config.dataset} has boxes only")
        if len(source.class_names) < 2:
            raise FlagError(f"--task=classification needs at least two classes; --dataset={config.dataset} has "
                            f"{len(source.class_names)}: {', '.join(source.class_names) or 'none'}")
        return source.class_names

    def augment(self) -> Augment:
        """Random-resized crop, flip, colour jitter, RandAugment, MixUp and CutMix, from the flags."""
        config = self.config
        return Augment(flip=config.flip, crop_scale=(config.min_crop_area, 1.0), brightness=config.color_jitter,
                       contrast=config.color_jitter, saturation=config.color_jitter, hue=config.hue,
                       randaugment_ops=config.randaugment_ops,
                       randaugment_magnitude=config.randaugment_magnitude, mixup=config.mixup,
                       cutmix=config.cutmix, num_classes=self.num_classes)

    def recipe(self, training: bool) -> ClassificationRecipe:
        """Resize for evaluation; crops and augmentation for training."""
        return ClassificationRecipe(self.config.image_size, self.augment() if training else Augment(),
                                    self.dct_ratios(training))

    def build_model(self) -> keras.Model:
        """The classifier --model with one logit per class."""
        config = self.config
        return classification.build_classifier(config.model, self.num_classes, config.image_size,
                                               imagenet=config.init_checkpoint == "imagenet")

    def backbone_layers(self, model: keras.Model) -> list[keras.layers.Layer]:
        """Every layer with weights but the logits."""
        return classification.backbone_layers(model)

    def compile_args(self) -> dict:
        """Cross-entropy on class-probability labels (one-hot, or mixed by MixUp/CutMix) and float32 logits,
        with label smoothing, averaged over weighted (real) examples; top-1 accuracy, and top-5 when there are
        more than 10 classes, as weighted metrics (padding examples weigh 0).

        Metrics are exact over padded evaluation batches; Keras averages this loss per batch, so val_loss
        weighs the last, partly padded, batch like a full one.
        """
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if self.num_classes > 10:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.config.label_smoothing,
                                                    reduction="mean_with_sample_weight")
        return {"loss": loss, "weighted_metrics": metrics}

    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """(inputs, class probabilities[, sample weights])."""
        label = batch["label"]
        if not label.dtype.is_floating:  # integer labels; MixUp/CutMix batches are already probabilities
            label = tf.one_hot(label, self.num_classes)
        if "weight" in batch:  # evaluation batches: padding examples weigh 0
            return batch["image"], label, batch["weight"]
        return batch["image"], label

    def serving_core(self, model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Class probabilities [B, classes]."""
        return {"probabilities": tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))}

    def serving_finish(self, core: dict[str, tf.Tensor], original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """The probabilities and the `top_k` classes: "classes" (ids), "scores" and "names" [B, k]."""
        probabilities = core["probabilities"]
        scores, classes = tf.math.top_k(probabilities, min(self.top_k, self.num_classes))
        return {"probabilities": probabilities, "classes": classes, "scores": scores,
                "names": tf.gather(tf.constant(self.class_names), classes)}

    def agreement(self, reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
        """The share of images with the same top class, and the largest difference of any probability."""
        return {"top1_agreement": float(np.mean(reference["classes"][:, 0] == other["classes"][:, 0])),
                "max_probability_difference": float(np.max(np.abs(reference["probabilities"]
                                                                  - other["probabilities"])))}

    def report(self, model: keras.Model, dataset: tf.data.Dataset, folder: str) -> dict:
        """Confusion matrices, the per-class precision / recall / F1 table, top-k accuracy and the most
        confidently wrong images (engine/reports/classification.py)."""
        return classification_report.write(model, dataset, self.class_names, folder)
