"""RandAugment (Cubuk et al. 2019) per example, driven by the example's stateless seed.

`num_ops` operations are drawn uniformly from `operations` and applied in turn, each at `magnitude` (0-10, the paper's
scale) with a random sign where the operation has one. Only the drawn branch runs (`tf.switch_case`).

Not `keras.layers.RandAugment`: measured here, it cost ~28 ms of CPU per 224 px image in a tf.data map (30x
decoding the JPEG) and gave different batches on two runs with the same seed (its SeedGenerator is shared
state that parallel map calls race on).
"""

from __future__ import annotations

import math

import tensorflow as tf

from datasets.ops import geometry
from datasets.ops.photometric import grey

FILL = 128.0


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return degenerate + (image - degenerate) * factor


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    low = tf.reduce_min(image, axis=[0, 1])
    high = tf.reduce_max(image, axis=[0, 1])
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
    return tf.where(high > low, (image - low) * scale, image)


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation of each channel (the PIL ImageOps.equalize rule)."""
    channels = []
    for c in range(3):
        values = tf.cast(image[..., c], tf.int32)
        histogram = tf.math.bincount(values, minlength=256, maxlength=256, dtype=tf.float32)
        last = tf.gather(histogram, tf.reduce_max(values))
        step = tf.floor((tf.reduce_sum(histogram) - last) / 255.0)
        lut = tf.clip_by_value(tf.floor((tf.cumsum(histogram, exclusive=True) + tf.floor(step / 2)) / tf.maximum(step, 1.0)),
                               0.0, 255.0)
        channels.append(tf.where(step > 0, tf.gather(lut, values), image[..., c]))
    return tf.stack(channels, axis=-1)


def _affine(image: tf.Tensor, matrix: list[tf.Tensor]) -> tf.Tensor:
    """`image` resampled through the 2x3 output-to-input map `matrix` (about the image centre)."""
    size = image.shape[0]
    centre = size / 2 - 0.5
    a0, a1, a2, b0, b1, b2 = matrix
    # conjugate by the shift to the centre: input = M (output - c) + c
    transform = tf.stack([a0, a1, a2 + centre - a0 * centre - a1 * centre,
                          b0, b1, b2 + centre - b0 * centre - b1 * centre, 0.0, 0.0])
    return geometry.project(image[None], transform[None], size, FILL)[0]


def operations(image: tf.Tensor, level: tf.Tensor, sign: tf.Tensor) -> list:
    """The operations as branches over float pixels in [0, 255]; `level` in [0, 1]."""
    one, zero = tf.constant(1.0), tf.constant(0.0)
    size = float(image.shape[0])
    factor = 1.0 + sign * 0.9 * level
    angle = sign * level * 30.0 * math.pi / 180.0
    shear = sign * level * 0.3
    shift = sign * level * 0.45 * size
    bits = 8 - tf.cast(tf.round(level * 4.0), tf.int32)
    return [
        lambda: image,
        lambda: _autocontrast(image),
        lambda: _equalize(image),
        lambda: _affine(image, [tf.cos(angle), -tf.sin(angle), zero, tf.sin(angle), tf.cos(angle), zero]),
        lambda: tf.where(image >= 256.0 - 128.0 * level, 255.0 - image, image),  # solarize
        lambda: _blend(grey(image), image, factor),  # colour
        lambda: tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(image, tf.int32), 8 - bits), 8 - bits),
                        tf.float32),  # posterize
        lambda: _blend(tf.reduce_mean(grey(image)), image, factor),  # contrast
        lambda: _blend(tf.zeros_like(image), image, factor),  # brightness
        lambda: _blend(tf.nn.avg_pool2d(image[None], 3, 1, "SAME")[0], image, factor),  # sharpness
        lambda: _affine(image, [one, shear, zero, zero, one, zero]),  # shear x
        lambda: _affine(image, [one, zero, zero, shear, one, zero]),  # shear y
        lambda: _affine(image, [one, zero, shift, zero, one, zero]),  # translate x
        lambda: _affine(image, [one, zero, zero, zero, one, shift]),  # translate y
    ]


NUM_OPS = 14


def randaugment(num_ops: int, magnitude: float) -> callable:
    """Returns a per-example function applying RandAugment to "image" (uint8 [S, S, 3]) from "seed"."""
    level = tf.constant(magnitude / 10.0, tf.float32)

    def apply(example: dict) -> dict:
        image = tf.cast(example["image"], tf.float32)
        for i in range(num_ops):
            seed = tf.random.experimental.stateless_fold_in(example["seed"], 100 + i)
            choice = tf.random.stateless_uniform([], seed, 0, NUM_OPS, dtype=tf.int32)
            coin = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1))
            sign = tf.where(coin < 0.5, -1.0, 1.0)
            image = tf.clip_by_value(tf.switch_case(choice, operations(image, level, sign)), 0.0, 255.0)
            image.set_shape(example["image"].shape)
        return {**example, "image": tf.cast(image + 0.5, tf.uint8)}

    return apply
