"""Geometric augmentation of images with their masks and boxes: letterbox, random affine, Mosaic, MixUp.

Examples and batches are dicts: "image" uint8 [.., S, S, 3], optionally "mask" uint8 [.., S, S, 1] (class
indices, `ignore` where there is no label), "boxes" float32 [.., N, 4] (x0, y0, x1, y1 in pixels) with
"classes" int32 [.., N] (-1 marks padding), and "seed" ([2] per example). Every transform moves the three
together through one affine (`datasets/geometry.py`); batch transforms are vectorised, shapes are static.
"""

from __future__ import annotations

import tensorflow as tf

from datasets import geometry, mixing

FILL = 114  # grey for pixels from outside an image (the YOLO convention)


def _seed(batch: dict, salt: int) -> tf.Tensor:
    """A stateless seed for one batch-level random draw: a function of the first example's seed."""
    return tf.random.experimental.stateless_fold_in(batch["seed"][0], salt)


def _uniform(batch: dict, salt: int, low: float | tf.Tensor, high: float | tf.Tensor) -> tf.Tensor:
    count = batch["image"].shape[0]
    return tf.random.stateless_uniform([count], _seed(batch, salt), 0.0, 1.0) * (high - low) + low


def _apply(batch: dict, affine: tf.Tensor, size: int, ignore: int, windows: tf.Tensor | None = None) -> dict:
    """`batch` moved by `affine` into size x size outputs; boxes clipped to `windows` (default: the output)."""
    out = {**batch, "image": tf.cast(geometry.warp(batch["image"], affine, size, FILL), tf.uint8)}
    if "mask" in batch:
        out["mask"] = tf.cast(geometry.warp(batch["mask"], affine, size, ignore, nearest=True), tf.uint8)
    if "boxes" in batch:
        if windows is None:
            windows = tf.tile(tf.constant([[0.0, 0.0, size, size]]), [affine.shape[0], 1])
        out["boxes"], out["classes"] = geometry.move_boxes(batch["boxes"], batch["classes"], affine, windows)
    return out


def letterbox(size: int, ignore: int) -> callable:
    """Returns a per-example function fitting "image" (and "mask", "boxes") into size x size, aspect kept,
    centred, the rest filled (FILL in the image, `ignore` in the mask)."""

    def apply(example: dict) -> dict:
        shape = tf.cast(tf.shape(example["image"])[:2], tf.float32)
        scale = size / tf.reduce_max(shape)
        new_h, new_w = tf.round(shape[0] * scale), tf.round(shape[1] * scale)
        affine = tf.stack([new_w / shape[1], new_h / shape[0], tf.floor((size - new_w) / 2),
                           tf.floor((size - new_h) / 2)])[None]
        batch = {k: v[None] for k, v in example.items()}
        return {k: v[0] for k, v in _apply(batch, affine, size, ignore).items()}

    return apply


def random_affine(size: int, scale: tuple[float, float], flip: bool, ignore: int) -> callable:
    """Returns a batch function: random zoom in `scale`, a random position (a random crop when zoomed in,
    random padding when zoomed out) and, if `flip`, a left-right flip with probability 1/2."""

    def apply(batch: dict) -> dict:
        zoom = _uniform(batch, 1, *scale)
        slack = size - zoom * size  # < 0: the zoomed image overhangs and is cropped
        tx = _uniform(batch, 2, 0.0, 1.0) * slack
        ty = _uniform(batch, 3, 0.0, 1.0) * slack
        mirror = _uniform(batch, 4, 0.0, 1.0) < 0.5 if flip else tf.zeros_like(zoom, tf.bool)
        affine = tf.stack([tf.where(mirror, -zoom, zoom), zoom, tf.where(mirror, tx + zoom * size, tx), ty], 1)
        return _apply(batch, affine, size, ignore)

    return apply


def _select(use: tf.Tensor, chosen: dict, original: dict) -> dict:
    """Per example: `chosen` where `use`, else `original`."""
    def pick(a, b):
        return tf.where(tf.reshape(use, [-1] + [1] * (a.shape.rank - 1)), a, b)

    return {k: pick(chosen[k], original[k]) if k in chosen else v for k, v in original.items()}


def mosaic(size: int, probability: float, ignore: int) -> callable:
    """Returns a batch function: with `probability` per example, a 2x2 Mosaic of it and the next three
    examples of the batch at half scale around a random centre in the middle half of the image.

    Each example takes part in four mosaics (once per quadrant), so a mosaic costs no extra decoding. The
    boxes of the four are kept up to the batch's box count (the first ones, in quadrant order)."""

    def apply(batch: dict) -> dict:
        count = batch["image"].shape[0]
        cx, cy = _uniform(batch, 5, size / 4, 3 * size / 4), _uniform(batch, 6, size / 4, 3 * size / 4)
        pixel = tf.range(size, dtype=tf.float32) + 0.5
        right = pixel[None, None, :] >= cx[:, None, None]  # [B, 1, S]
        below = pixel[None, :, None] >= cy[:, None, None]  # [B, S, 1]
        tiles, half = [], size / 2
        for quadrant, (is_right, is_below) in enumerate([(False, False), (True, False), (False, True), (True, True)]):
            source = {k: tf.roll(v, -quadrant, axis=0) for k, v in batch.items()}
            affine = tf.stack([tf.fill([count], 0.5), tf.fill([count], 0.5),
                               cx if is_right else cx - half, cy if is_below else cy - half], axis=1)
            zero, full = tf.zeros([count]), tf.fill([count], float(size))
            window = tf.stack([cx if is_right else zero, cy if is_below else zero,
                               full if is_right else cx, full if is_below else cy], axis=1)
            tiles.append(_apply(source, affine, size, ignore, window))
        quadrant_of_pixel = tf.cast(right, tf.int32) + 2 * tf.cast(below, tf.int32)  # [B, S, S]
        mixed = {}
        for key in ("image", "mask"):
            if key in batch:
                mixed[key] = tiles[0][key]
                for quadrant in (1, 2, 3):
                    mixed[key] = tf.where((quadrant_of_pixel == quadrant)[..., None], tiles[quadrant][key], mixed[key])
        if "boxes" in batch:
            mixed["boxes"], mixed["classes"] = geometry.compact_boxes(
                tf.concat([t["boxes"] for t in tiles], axis=1), tf.concat([t["classes"] for t in tiles], axis=1),
                batch["classes"].shape[1])
        return _select(_uniform(batch, 7, 0.0, 1.0) < probability, mixed, batch)

    return apply


def box_mixup(probability: float) -> callable:
    """Returns a batch function: with `probability` per example, blends it with the next example of the batch
    (weight ~ Beta(32, 32), as YOLO does) and keeps the boxes of both."""

    def apply(batch: dict) -> dict:
        partner = {k: tf.roll(v, -1, axis=0) for k, v in batch.items()}
        weight = mixing.beta(batch["image"].shape[0], 32.0, _seed(batch, 8))[:, None, None, None]
        image = tf.cast(batch["image"], tf.float32) * weight + tf.cast(partner["image"], tf.float32) * (1 - weight)
        mixed = {"image": tf.cast(image + 0.5, tf.uint8)}
        if "boxes" in batch:
            mixed["boxes"], mixed["classes"] = geometry.compact_boxes(
                tf.concat([batch["boxes"], partner["boxes"]], axis=1),
                tf.concat([batch["classes"], partner["classes"]], axis=1), batch["classes"].shape[1])
        return _select(_uniform(batch, 9, 0.0, 1.0) < probability, mixed, batch)

    return apply
