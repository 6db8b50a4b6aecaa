"""Training augmentation for the three kinds of labels, as per-example and per-batch steps of the pipeline.

- classification: random-resized crop fused with decoding (`datasets/decode.py`), flip and RandAugment per
  example; colour jitter, MixUp and CutMix (soft labels) per batch.
- segmentation: letterbox per example (deterministic, so it can be cached); random zoom, position and flip
  of image and mask together, then colour jitter on the image, per batch.
- detection: letterbox per example; colour (HSV-style) jitter, random zoom, position and flip of image and
  boxes, Mosaic and MixUp, per batch. With every example a mosaic tile (`mosaic` 1, the default), examples are
  decoded and letterboxed at half size and zoomed per tile before the 2x2 tiling (YOLO recipes transform the
  whole mosaic instead: this costs a quarter of the resampling).

Every random choice is a function of the run seed and the example's position in the stream (its "seed"),
so a deterministic run yields identical batches.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from datasets import decode, mixing, photometric, spatial
from datasets.randaugment import randaugment

KINDS = ("classification", "segmentation", "detection")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Augmentation settings; zero turns a step off."""

    flip: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)  # classification: random-resized-crop area range
    brightness: float = 0.0  # colour jitter factors in [1 - x, 1 + x]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # fraction of the colour circle
    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0  # 0-10
    mixup: float = 0.0  # classification: Beta(alpha, alpha); needs num_classes
    cutmix: float = 0.0
    num_classes: int = 0
    scale: tuple[float, float] = (1.0, 1.0)  # segmentation, detection: random zoom range
    translate: float = 0.0  # segmentation, detection: extra random shift, a fraction of the image size
    mosaic: float = 0.0  # detection: probability per example
    box_mixup: float = 0.0  # detection: probability per example

    @property
    def color(self) -> dict[str, float]:
        """The colour-jitter arguments of `photometric.color_jitter`."""
        return {"brightness": self.brightness, "contrast": self.contrast, "saturation": self.saturation,
                "hue": self.hue}


def classification_example_steps(augment: Augment) -> list[Callable[[dict], dict]]:
    """Per-example steps after the crop: flip, RandAugment."""
    steps = [decode.random_flip] if augment.flip else []
    if augment.randaugment_ops:
        steps.append(randaugment(augment.randaugment_ops, augment.randaugment_magnitude))
    return steps


def batch_step(kind: str, augment: Augment, image_size: int, ignore_value: int) -> Callable[[dict], dict]:
    """The per-batch augmentation of `kind`; it consumes the batch's "seed"."""
    moves = []
    if kind != "classification":
        # Before a Mosaic of every example, zoom, shift and flip each (half-size) tile: a quarter of the
        # resampling work of doing it to the whole mosaic, as YOLO recipes do.
        tiles = kind == "detection" and augment.mosaic >= 1.0
        moves.append(spatial.random_affine(image_size // 2 if tiles else image_size, augment.scale, augment.flip,
                                           ignore_value, augment.translate))
    if kind == "detection" and augment.mosaic:
        moves.append(spatial.mosaic(image_size, augment.mosaic, ignore_value))
    color = any(augment.color.values())
    mixing_on = kind == "classification" and (augment.mixup or augment.cutmix)

    # Colour is per image: for detection it goes first, on the (half-size) mosaic tiles, at a quarter of the cost.
    color_first = kind == "detection"

    def apply(batch: dict) -> dict:
        seed = tf.random.experimental.stateless_fold_in(batch["seed"][0], 20)
        if color and color_first:
            batch = {**batch, "image": photometric.color_jitter(batch["image"], seed, **augment.color)}
        for move in moves:
            batch = move(batch)
        if color and not color_first:
            batch = {**batch, "image": photometric.color_jitter(batch["image"], seed, **augment.color)}
        if mixing_on:
            labels = tf.one_hot(batch["label"], augment.num_classes)
            images, labels = mixing.mix(batch["image"], labels, augment.mixup, augment.cutmix,
                                        tf.random.experimental.stateless_fold_in(seed, 1))
            batch = {**batch, "image": images, "label": labels}
        if kind == "detection" and augment.box_mixup:
            batch = spatial.box_mixup(augment.box_mixup)(batch)
        return {k: v for k, v in batch.items() if k != "seed"}

    return apply
