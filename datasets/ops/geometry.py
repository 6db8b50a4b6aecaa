"""Batched geometry shared by images, masks and boxes: one affine map moves all three.

An affine here is a per-example scale and shift of continuous pixel coordinates (pixel i spans [i, i + 1]):
x_out = sx * x_in + tx, y_out = sy * y_in + ty, stored as [B, 4] = (sx, sy, tx, ty); sx < 0 mirrors. Images
are resampled bilinearly and masks by nearest neighbour in one `tf.image.crop_and_resize` call for the whole
batch (2.2x faster here than the general `ImageProjectiveTransformV3`, which `project` keeps for rotations
and shears); boxes (x0, y0, x1, y1 in pixels, class -1 marking padding) go through the same numbers
exactly. Output shapes are static.
"""

from __future__ import annotations

import tensorflow as tf

MIN_BOX_SIDE = 2.0  # pixels: narrower boxes are degenerate and dropped
MIN_VISIBLE = 0.1  # boxes keeping less than this fraction of their area inside the window are dropped


def project(images: tf.Tensor, transforms: tf.Tensor, size: int, fill_value: float, nearest: bool = False
            ) -> tf.Tensor:
    """Resamples [B, H, W, C] into [B, size, size, C]; `transforms` [B, 8] map each output pixel-centre index
    (x, y) to the input one ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1; pixels from
    outside get `fill_value`."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([size, size]),
        fill_value=tf.constant(fill_value, tf.float32), interpolation="NEAREST" if nearest else "BILINEAR",
        fill_mode="CONSTANT")
    return tf.ensure_shape(out, [images.shape[0], size, size, images.shape[-1]])


def warp(images: tf.Tensor, affine: tf.Tensor, size: int, fill_value: float, nearest: bool = False) -> tf.Tensor:
    """Resamples [B, H, W, C] (H, W >= 2) under `affine` into [B, size, size, C] of the same dtype; pixels from
    outside get `fill_value`."""
    sx, sy, tx, ty = tf.unstack(affine, axis=1)
    height, width = (tf.cast(tf.shape(images)[i], tf.float32) - 1.0 for i in (1, 2))
    # Output pixel-centre index j samples input index u = (j + 0.5 - t) / s - 0.5; crop_and_resize samples
    # u = x1 (W - 1) + j (x2 - x1) (W - 1) / (size - 1), so:
    x1, y1 = ((0.5 - tx) / sx - 0.5) / width, ((0.5 - ty) / sy - 0.5) / height
    x2, y2 = x1 + (size - 1) / (sx * width), y1 + (size - 1) / (sy * height)
    out = tf.image.crop_and_resize(images, tf.stack([y1, x1, y2, x2], axis=1), tf.range(tf.shape(images)[0]),
                                   [size, size], method="nearest" if nearest else "bilinear",
                                   extrapolation_value=fill_value)
    out = tf.ensure_shape(out, [images.shape[0], size, size, images.shape[-1]])
    if images.dtype.is_integer:
        out = tf.cast(out if nearest else out + 0.5, images.dtype)
    return out


def move_boxes(boxes: tf.Tensor, classes: tf.Tensor, affine: tf.Tensor, window: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """Maps boxes [B, N, 4] under `affine`, clips them to `window` ([B, 4] x0, y0, x1, y1) and drops (class -1,
    box 0) those that are padding, thinner than MIN_BOX_SIDE or keep less than MIN_VISIBLE of their area."""
    sx, sy, tx, ty = (v[:, None] for v in tf.unstack(affine, axis=1))
    xa, xb = boxes[..., 0] * sx + tx, boxes[..., 2] * sx + tx
    ya, yb = boxes[..., 1] * sy + ty, boxes[..., 3] * sy + ty
    x0, x1, y0, y1 = tf.minimum(xa, xb), tf.maximum(xa, xb), tf.minimum(ya, yb), tf.maximum(ya, yb)
    area = (x1 - x0) * (y1 - y0)
    wx0, wy0, wx1, wy1 = (v[:, None] for v in tf.unstack(window, axis=1))
    x0, x1 = tf.clip_by_value(x0, wx0, wx1), tf.clip_by_value(x1, wx0, wx1)
    y0, y1 = tf.clip_by_value(y0, wy0, wy1), tf.clip_by_value(y1, wy0, wy1)
    keep = ((classes >= 0) & (x1 - x0 >= MIN_BOX_SIDE) & (y1 - y0 >= MIN_BOX_SIDE)
            & ((x1 - x0) * (y1 - y0) >= MIN_VISIBLE * area))
    moved = tf.where(keep[..., None], tf.stack([x0, y0, x1, y1], axis=-1), 0.0)
    return moved, tf.where(keep, classes, -1)


def compact_boxes(boxes: tf.Tensor, classes: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Moves real boxes ([B, M, 4], class >= 0) to the front, in order, and keeps the first `max_boxes`."""
    order = tf.argsort(tf.cast(classes < 0, tf.int32), axis=1, stable=True)[:, :max_boxes]
    return tf.gather(boxes, order, batch_dims=1), tf.gather(classes, order, batch_dims=1)
