"""RandAugment (Cubuk et al. 2019) of each example of a batch, driven by the example's stateless seed.

`num_ops` operations are drawn uniformly from `operations` and applied in turn, each at `magnitude` (0-10, the paper's
scale) with a random sign where the operation has one. Only the drawn branch runs (`tf.switch_case`). A
batch's operations are one XLA computation: the casts, the operation and the clipping fuse into a few loops,
so RandAugment 2x9 costs 0.63 instead of 1.55 ms of CPU per 224 px image in a tf.data map (measured), and
0.44 instead of 0.52 ms run per batch rather than as one computation per image (measured, the same images).
That is why the affine and the 3x3 mean are written as gathers and shifted sums: XLA has no kernel for
ImageProjectiveTransformV3, and its pooling ran 3x slower than the sums.

Not `keras.layers.RandAugment`: measured here, it cost ~28 ms of CPU per 224 px image in a tf.data map (30x
decoding the JPEG) and gave different batches on two runs with the same seed (its SeedGenerator is shared
state that parallel map calls race on).
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

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
        histogram = tf.math.unsorted_segment_sum(tf.ones_like(image[..., c]), values, 256)  # XLA has no bincount
        last = tf.gather(histogram, tf.reduce_max(values))
        step = tf.floor((tf.reduce_sum(histogram) - last) / 255.0)
        lut = tf.clip_by_value(tf.floor((tf.cumsum(histogram, exclusive=True) + tf.floor(step / 2)) / tf.maximum(step, 1.0)),
                               0.0, 255.0)
        channels.append(tf.where(step > 0, tf.gather(lut, values), image[..., c]))
    return tf.stack(channels, axis=-1)


def _smooth(image: tf.Tensor) -> tf.Tensor:
    """The 3x3 mean of each pixel's neighbourhood inside the image (avg_pool2d "SAME"), as sums of shifted
    copies: XLA fuses them into one loop, where its pooling ran 6x slower on this CPU."""
    size = image.shape[0]
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    count = tf.pad(tf.ones([size, size, 1]), [[1, 1], [1, 1], [0, 0]])
    total = sum(padded[dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3))
    return total / sum(count[dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3))


def _affine(image: tf.Tensor, matrix: list[tf.Tensor]) -> tf.Tensor:
    """`image` [S, S, 3] resampled bilinearly through the 2x3 output-to-input map `matrix` (pixel-centre
    indices, about the image centre); pixels from outside blend with FILL, as ImageProjectiveTransformV3's
    constant fill does. Written as four gathers so that XLA compiles it (it has no kernel for that op)."""
    size = image.shape[0]
    centre = size / 2 - 0.5
    a0, a1, a2, b0, b1, b2 = matrix
    index = tf.range(size, dtype=tf.float32) - centre
    x, y = index[None, :], index[:, None]
    u = a0 * x + a1 * y + a2 + centre  # input column of each output pixel, [S, S]
    v = b0 * x + b1 * y + b2 + centre
    u0, v0 = tf.floor(u), tf.floor(v)
    wu, wv = (u - u0)[..., None], (v - v0)[..., None]
    padded = tf.reshape(tf.pad(image, [[1, 1], [1, 1], [0, 0]], constant_values=FILL), [-1, 3])  # a FILL border

    def at(row: tf.Tensor, col: tf.Tensor) -> tf.Tensor:  # rows/cols outside read the border
        row = tf.clip_by_value(tf.cast(row, tf.int32) + 1, 0, size + 1)
        col = tf.clip_by_value(tf.cast(col, tf.int32) + 1, 0, size + 1)
        return tf.gather(padded, row * (size + 2) + col)

    top = at(v0, u0) * (1.0 - wu) + at(v0, u0 + 1.0) * wu
    bottom = at(v0 + 1.0, u0) * (1.0 - wu) + at(v0 + 1.0, u0 + 1.0) * wu
    return top * (1.0 - wv) + bottom * wv


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
        lambda: _blend(_smooth(image), image, factor),  # sharpness
        lambda: _affine(image, [one, shear, zero, zero, one, zero]),  # shear x
        lambda: _affine(image, [one, zero, zero, shear, one, zero]),  # shear y
        lambda: _affine(image, [one, zero, shift, zero, one, zero]),  # translate x
        lambda: _affine(image, [one, zero, zero, zero, one, shift]),  # translate y
    ]


NUM_OPS = 14


def randaugment(num_ops: int, magnitude: float) -> Callable[[dict], dict]:
    """Returns a per-batch function applying RandAugment to each image of "image" (uint8 [B, S, S, 3]) from its
    own row of "seed" [B, 2]: the same image as one example's RandAugment from that seed."""
    level = tf.constant(magnitude / 10.0, tf.float32)

    def augment_one(image: tf.Tensor, example_seed: tf.Tensor) -> tf.Tensor:
        shape = image.shape
        image = tf.cast(image, tf.float32)
        for i in range(num_ops):
            seed = tf.random.experimental.stateless_fold_in(example_seed, 100 + i)
            choice = tf.random.stateless_uniform([], seed, 0, NUM_OPS, dtype=tf.int32)
            coin = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1))
            sign = tf.where(coin < 0.5, -1.0, 1.0)
            image = tf.clip_by_value(tf.switch_case(choice, operations(image, level, sign)), 0.0, 255.0)
            image.set_shape(shape)
        return tf.cast(image + 0.5, tf.uint8)

    @tf.function(jit_compile=True)
    def augment(images: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """One XLA computation per batch: a loop over its images, where each drawn operation and the clipping
        fuse into a few loops."""
        return tf.map_fn(lambda pair: augment_one(*pair), (images, seeds),
                         fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8))

    def apply(batch: dict) -> dict:
        return {**batch, "image": augment(batch["image"], batch["seed"])}

    return apply
