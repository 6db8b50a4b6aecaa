"""What each kind of labels needs from the input pipeline: one recipe per kind, made of small steps over dicts
of tensors (`datasets/ops/`).

A recipe gives
  targets           what the records must carry besides the image (masks, boxes)
  preprocess()      the deterministic steps, decode then resize (classification) or letterbox (segmentation,
                    detection): all of evaluation's preprocessing, and what serving reuses
  training_steps()  training's steps per example: a deterministic part (what `--cache` keeps) and a random one
  batch_step()      training's random steps per batch (None when there are none)
and `datasets/pipeline.py` runs any recipe the same way.

- classification: random-resized crop fused with decoding and flip per example; RandAugment (each image from
  its own seed), colour jitter, MixUp and CutMix (soft labels) per batch.
- segmentation: letterbox and random zoom, position and flip of image and mask together, in one resampling
  per example; with a cache, the letterbox is cached and the random move is per batch; then colour jitter on
  the image, per batch.
- detection: letterbox per example; colour (HSV-style) jitter, random zoom, position and flip of image and
  boxes, Mosaic and MixUp, per batch. With every example a mosaic tile (`mosaic` 1), examples are decoded and
  letterboxed at half size and zoomed per tile before the 2x2 tiling (YOLO recipes transform the whole
  mosaic instead: this costs a quarter of the resampling).

Every random choice is a function of the run seed and the example's position in the stream (its "seed"),
so a deterministic run yields identical batches.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import tensorflow as tf

from datasets.ops import decode, mixing, photometric, spatial
from datasets.ops.randaugment import randaugment
from datasets.sources.base import Targets

ExampleFn = Callable[[dict], dict]


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


def compose(*steps: ExampleFn) -> ExampleFn:
    """One function applying `steps` in order."""

    def apply(example: dict) -> dict:
        for step in steps:
            example = step(example)
        return example

    return apply


def _batch_seed(batch: dict) -> tf.Tensor:
    """The seed of a batch's colour and mixing draws: a function of its first example's seed."""
    return tf.random.experimental.stateless_fold_in(batch["seed"][0], 20)


def _jitter(batch: dict, augment: Augment) -> dict:
    """Colour jitter of the batch's images (nothing when every colour strength is 0)."""
    if not any(augment.color.values()):
        return batch
    return {**batch, "image": photometric.color_jitter(batch["image"], _batch_seed(batch), **augment.color)}


def _without_seed(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "seed"}


class Recipe(abc.ABC):
    """The interface of the three recipes below (see the module docstring)."""

    image_size: int
    augment: Augment
    dct_ratios: tuple[int, ...]  # the JPEG DCT scales decoding may use (`decode.DCT_RATIOS`); () full scale only
    batch_group = 1  # training batches augmented together (Mosaic draws tiles from four)

    @property
    @abc.abstractmethod
    def targets(self) -> Targets:
        """What the records must carry besides the image."""

    @abc.abstractmethod
    def output_keys(self, training: bool) -> tuple[str, ...]:
        """The keys of every batch (evaluation adds "weight")."""

    @abc.abstractmethod
    def preprocess(self) -> ExampleFn:
        """Decoding and resizing or letterboxing to `image_size`: deterministic."""

    def cache_size(self, training: bool) -> int:
        """Side of the images a cache keeps (names the disk cache)."""
        return self.image_size

    def training_steps(self, cached: bool) -> tuple[list[ExampleFn], list[ExampleFn]]:
        """Training's per-example steps: (deterministic and cacheable, random)."""
        return [self.preprocess()], []

    @abc.abstractmethod
    def batch_step(self, cached: bool) -> Callable[[dict], dict] | None:
        """Training's per-batch augmentation (after `training_steps(cached)`), which consumes the batch's "seed";
        None when there is none."""

    def padding(self, spec: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
        """An evaluation padding example (weight 0) of this element `spec`: zeros."""
        return {key: tf.zeros(s.shape, s.dtype) for key, s in spec.items()}


@dataclasses.dataclass(frozen=True)
class ClassificationRecipe(Recipe):
    """Image-level labels: "image" uint8 [s, s, 3] and "label" int32 (float32 [classes] after MixUp/CutMix)."""

    image_size: int
    augment: Augment = Augment()
    dct_ratios: tuple[int, ...] = decode.DCT_RATIOS

    @property
    def targets(self) -> Targets:
        return Targets()

    def output_keys(self, training: bool) -> tuple[str, ...]:
        return ("image", "label")

    def preprocess(self) -> ExampleFn:
        """The whole image resized to image_size x image_size."""
        return decode.decode_resize(self.image_size, self.dct_ratios)

    def cache_size(self, training: bool) -> int:
        """Training crops come from cached images 8/7 larger (as "resize 256, crop 224"), so that a crop of
        most of the image is not upsampled; whole images (no crops) are cached at the input size."""
        return round(self.image_size * 8 / 7) if training and self.augment.crop_scale[0] < 1.0 else self.image_size

    def training_steps(self, cached: bool) -> tuple[list[ExampleFn], list[ExampleFn]]:
        """The same random-resized crop with or without a cache: fused with decoding, or of the cached, larger
        images (new crops every epoch). Then flip."""
        augment = self.augment
        after_crop = [decode.random_flip] if augment.flip else []
        if augment.crop_scale[0] >= 1.0:  # whole images: decoded and resized once, cached at the input size
            whole = decode.decode_resize(self.image_size, self.dct_ratios)
            return ([whole], after_crop) if cached else ([], [whole, *after_crop])
        if cached:
            return ([decode.decode_resize(self.cache_size(True), self.dct_ratios)],
                    [decode.random_resized_crop(self.image_size, augment.crop_scale), *after_crop])
        return [], [decode.decode_random_crop(self.image_size, augment.crop_scale, self.dct_ratios), *after_crop]

    def batch_step(self, cached: bool) -> Callable[[dict], dict] | None:
        """RandAugment of each image (from its own seed: as it would be per example, at less cost per image), colour
        jitter, then MixUp/CutMix with soft labels."""
        augment = self.augment
        if not (augment.randaugment_ops or any(augment.color.values()) or augment.mixup or augment.cutmix):
            return None
        each = randaugment(augment.randaugment_ops, augment.randaugment_magnitude) if augment.randaugment_ops else None

        def apply(batch: dict) -> dict:
            batch = _jitter(each(batch) if each else batch, augment)
            if augment.mixup or augment.cutmix:
                labels = tf.one_hot(batch["label"], augment.num_classes)
                images, labels = mixing.mix(batch["image"], labels, augment.mixup, augment.cutmix,
                                            tf.random.experimental.stateless_fold_in(_batch_seed(batch), 1))
                batch = {**batch, "image": images, "label": labels}
            return _without_seed(batch)

        return apply


@dataclasses.dataclass(frozen=True)
class SegmentationRecipe(Recipe):
    """Class-index masks: "image" and "mask" uint8 [s, s, 1]; mask values at or above `num_classes` stop the
    run, but `ignore_value`, which also fills the letterbox padding."""

    image_size: int
    augment: Augment = Augment()
    ignore_value: int = 255
    num_classes: int = 256
    dct_ratios: tuple[int, ...] = decode.DCT_RATIOS

    @property
    def targets(self) -> Targets:
        return Targets(masks=True)

    def output_keys(self, training: bool) -> tuple[str, ...]:
        return ("image", "mask")

    def preprocess(self) -> ExampleFn:
        """Decoded (mask checked) and letterboxed, the mask padded with `ignore_value`."""
        return compose(*self._letterboxed())

    def _letterboxed(self, move: Callable[[dict], tf.Tensor] | None = None) -> list[ExampleFn]:
        """Decoding (mask checked) and the letterbox, with `move` in the same resampling if given."""
        return [decode.decode_for_size(self.image_size, self.num_classes, self.ignore_value, self.dct_ratios),
                spatial.letterbox(self.image_size, self.ignore_value, move)]

    def _move(self) -> Callable[[dict], tf.Tensor]:
        augment = self.augment
        return spatial.random_affine_of(self.image_size, augment.scale, augment.flip, augment.translate)

    def training_steps(self, cached: bool) -> tuple[list[ExampleFn], list[ExampleFn]]:
        """With a cache, the letterbox (the random zoom, shift and flip come per batch); without one, the
        letterbox and the random move of each example in one resampling of image and mask."""
        return ([self.preprocess()], []) if cached else ([], self._letterboxed(self._move()))

    def batch_step(self, cached: bool) -> Callable[[dict], dict]:
        """Random zoom, shift and flip of image and mask together (of cached, letterboxed batches), then colour
        jitter of the image."""
        augment = self.augment
        if not cached:
            return lambda batch: _without_seed(_jitter(batch, augment))
        move = spatial.random_affine(self.image_size, augment.scale, augment.flip, self.ignore_value,
                                     augment.translate)
        return lambda batch: _without_seed(_jitter(move(batch), augment))

    def padding(self, spec: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
        """Padding masks are all `ignore_value`: no pixel counts."""
        return {**super().padding(spec), "mask": tf.fill(spec["mask"].shape, tf.constant(self.ignore_value, tf.uint8))}


@dataclasses.dataclass(frozen=True)
class DetectionRecipe(Recipe):
    """Boxes: "image", "boxes" float32 [max_boxes, 4] (x0, y0, x1, y1 pixels of the letterbox) and "classes"
    int32 [max_boxes] (-1 pads); evaluation adds the file "id" and the "original_size" [h, w] that maps boxes
    back to the original image (`spatial.unletterbox_boxes`)."""

    image_size: int
    augment: Augment = Augment()
    max_boxes: int = 100
    dct_ratios: tuple[int, ...] = decode.DCT_RATIOS

    @property
    def targets(self) -> Targets:
        return Targets(max_boxes=self.max_boxes)

    @property
    def batch_group(self) -> int:
        """Mosaic draws its tiles from four batches at once, then splits them: no example twice in a batch."""
        return 4 if self.augment.mosaic else 1

    @property
    def _tiles_only(self) -> bool:
        """Every example a mosaic tile: decode, letterbox and move at half size; tiles join without resampling."""
        return self.augment.mosaic >= 1.0

    def output_keys(self, training: bool) -> tuple[str, ...]:
        return ("image", "boxes", "classes") + (() if training else ("id", "original_size"))

    def preprocess(self) -> ExampleFn:
        """Decoded and letterboxed, boxes with the image."""
        return self._letterboxed(self.image_size)

    def _letterboxed(self, size: int) -> ExampleFn:
        return compose(decode.decode_for_size(size, dct_ratios=self.dct_ratios), spatial.letterbox(size, 255))

    def cache_size(self, training: bool) -> int:
        return self.image_size // 2 if training and self._tiles_only else self.image_size

    def training_steps(self, cached: bool) -> tuple[list[ExampleFn], list[ExampleFn]]:
        return [self._letterboxed(self.cache_size(True))], []

    def batch_step(self, cached: bool) -> Callable[[dict], dict]:
        """Colour jitter (per image, so first: on half-size tiles it costs a quarter), random zoom, shift and
        flip of image and boxes (of each tile before a Mosaic of every example), Mosaic, MixUp."""
        augment = self.augment
        moves = [spatial.random_affine(self.cache_size(True), augment.scale, augment.flip, 255, augment.translate)]
        if augment.mosaic:
            moves.append(spatial.mosaic(self.image_size, augment.mosaic, 255))
        if augment.box_mixup:
            moves.append(spatial.box_mixup(augment.box_mixup))

        def apply(batch: dict) -> dict:
            batch = _jitter(batch, augment)
            for move in moves:
                batch = move(batch)
            return _without_seed(batch)

        return apply

    def padding(self, spec: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
        """Padding images have no boxes (class -1)."""
        return {**super().padding(spec), "classes": tf.fill(spec["classes"].shape, -1)}
