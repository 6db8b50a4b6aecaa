"""Colour augmentation of a batch, image only (masks and boxes never change colour), vectorised over the batch
with one random factor per example."""

from __future__ import annotations

import tensorflow as tf

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as tf.image.rgb_to_grayscale (a tuple: no
# tensor at import time, which would start TensorFlow before a multi-worker strategy can configure it)


def grey(x: tf.Tensor) -> tf.Tensor:
    """Luma of float RGB pixels [..., 3] as [..., 1]."""
    return tf.tensordot(x, _GREY, 1)[..., None]


def _factors(count: int, seed: tf.Tensor, salt: int, strength: float) -> tf.Tensor:
    """[count, 1, 1, 1] factors uniform in [1 - strength, 1 + strength]."""
    seed = tf.random.experimental.stateless_fold_in(seed, salt)
    return tf.random.stateless_uniform([count, 1, 1, 1], seed, 1.0 - strength, 1.0 + strength)


def color_jitter(images: tf.Tensor, seed: tf.Tensor, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> tf.Tensor:
    """Random brightness, contrast and saturation (factors in [1 - s, 1 + s]) and hue shift (up to `hue` of the
    colour circle) of uint8 images [B, H, W, 3], each example its own draw from the batch `seed`."""
    count = images.shape[0]
    x = tf.cast(images, tf.float32)
    if brightness:
        x = x * _factors(count, seed, 1, brightness)
    if contrast:
        mean = tf.reduce_mean(grey(x), axis=[1, 2, 3], keepdims=True)
        x = mean + (x - mean) * _factors(count, seed, 2, contrast)
    if saturation:
        luma = grey(x)
        x = luma + (x - luma) * _factors(count, seed, 3, saturation)
    if hue:
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
        shift = tf.random.stateless_uniform([count, 1, 1], tf.random.experimental.stateless_fold_in(seed, 4),
                                            -hue, hue)
        hsv = tf.stack([tf.math.floormod(hsv[..., 0] + shift, 1.0), hsv[..., 1], hsv[..., 2]], axis=-1)
        x = tf.image.hsv_to_rgb(hsv) * 255.0
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0) + 0.5, tf.uint8)
