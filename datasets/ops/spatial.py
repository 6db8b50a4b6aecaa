"""Geometry of images with their masks and boxes: the letterbox and its inverse, random affine, Mosaic, MixUp.

Examples and batches are dicts: "image" uint8 [.., S, S, 3], optionally "mask" uint8 [.., S, S, 1] (class
indices, `ignore` where there is no label), "boxes" float32 [.., N, 4] (x0, y0, x1, y1 in pixels) with
"classes" int32 [.., N] (-1 marks padding), and "seed" ([2] per example). Every transform moves the three
together through one affine (`datasets/ops/geometry.py`); batch transforms are vectorised, shapes are static.
"""

from __future__ import annotations

import tensorflow as tf

from datasets.ops import geometry, mixing

FILL = 114  # grey for pixels from outside an image (the YOLO convention)


def _seed(batch: dict, salt: int) -> tf.Tensor:
    """A stateless seed for one batch-level random draw: a function of the first example's seed."""
    return tf.random.experimental.stateless_fold_in(batch["seed"][0], salt)


def _uniform(batch: dict, salt: int, low: float | tf.Tensor, high: float | tf.Tensor) -> tf.Tensor:
    count = batch["image"].shape[0]
    return tf.random.stateless_uniform([count], _seed(batch, salt), 0.0, 1.0) * (high - low) + low


def _apply(batch: dict, affine: tf.Tensor, size: int, ignore: int, windows: tf.Tensor | None = None) -> dict:
    """`batch` moved by `affine` into size x size outputs; boxes clipped to `windows` (default: the output)."""
    out = {**batch, "image": geometry.warp(batch["image"], affine, size, FILL)}
    if "mask" in batch:
        out["mask"] = geometry.warp(batch["mask"], affine, size, ignore, nearest=True)
    if "boxes" in batch:
        if windows is None:
            windows = tf.tile(tf.constant([[0.0, 0.0, size, size]]), [affine.shape[0], 1])
        out["boxes"], out["classes"] = geometry.move_boxes(batch["boxes"], batch["classes"], affine, windows)
    return out


def letterbox_frame(original_size: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where an image of `original_size` ([..., 2] h, w) lands in a `size` letterbox: its scaled height and
    width and the top and left padding, in pixels (float32, batched like `original_size`)."""
    original = tf.cast(original_size, tf.float32)
    scale = size / tf.reduce_max(original, axis=-1)
    new_h, new_w = tf.round(original[..., 0] * scale), tf.round(original[..., 1] * scale)
    return new_h, new_w, tf.floor((size - new_h) / 2), tf.floor((size - new_w) / 2)


def letterbox(size: int, ignore: int, move: callable | None = None) -> callable:
    """Returns a per-example function fitting "image" (and "mask", "boxes") into size x size, aspect kept,
    centred, the rest filled (FILL in the image, `ignore` in the mask). Boxes are in the pixels of the
    original, "image_size" [h, w] (default: the image's shape), kept as "original_size"; image and mask may be
    decoded smaller. `unletterbox_boxes` maps boxes back. `move` (an example's [1, 4] affine of the letterbox,
    from `random_affine_of`) is applied in the same resampling: one per image for the chain."""

    def apply(example: dict) -> dict:
        original = tf.cast(example.get("image_size", tf.shape(example["image"])[:2]), tf.float32)
        new_h, new_w, top, left = letterbox_frame(original, size)
        then = move({k: v[None] for k, v in example.items()}) if move else tf.constant([[1.0, 1.0, 0.0, 0.0]])

        def onto_target(shape: tf.Tensor) -> tf.Tensor:  # the affine taking a [h, w] extent onto the target
            shape = tf.cast(shape, tf.float32)
            return _then(tf.stack([new_w / shape[1], new_h / shape[0], left, top])[None], then)

        out = {k: v for k, v in example.items() if k != "image_size"}
        out["original_size"] = tf.cast(original, tf.int32)  # [h, w]: maps predictions back (detection eval)
        out["image"] = geometry.warp(example["image"][None], onto_target(tf.shape(example["image"])[:2]), size,
                                     FILL)[0]
        if "mask" in example:
            out["mask"] = geometry.warp(example["mask"][None], onto_target(tf.shape(example["mask"])[:2]), size,
                                        ignore, nearest=True)[0]
        if "boxes" in example:
            boxes, classes = geometry.move_boxes(example["boxes"][None], example["classes"][None],
                                                 onto_target(original), tf.constant([[0.0, 0.0, size, size]]))
            out["boxes"], out["classes"] = boxes[0], classes[0]
        return out

    return apply


def _then(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
    """The affine [B, 4] applying `first`, then `second`."""
    sx, sy, tx, ty = tf.unstack(first, axis=1)
    zx, zy, ux, uy = tf.unstack(second, axis=1)
    return tf.stack([zx * sx, zy * sy, zx * tx + ux, zy * ty + uy], axis=1)


def unletterbox_boxes(boxes: tf.Tensor, original_size: tf.Tensor, size: int) -> tf.Tensor:
    """Boxes [..., N, 4] (x0, y0, x1, y1) in the pixels of a `size` letterbox of images of `original_size`
    ([..., 2] h, w) back in the original images' pixels, clipped to them: the inverse of `letterbox`."""
    new_h, new_w, top, left = (v[..., None, None] for v in letterbox_frame(original_size, size))
    original = tf.cast(original_size, tf.float32)[..., None, :]
    height, width = original[..., 0:1], original[..., 1:2]
    scale = tf.concat([new_w / width, new_h / height] * 2, axis=-1)
    out = (tf.cast(boxes, tf.float32) - tf.concat([left, top] * 2, axis=-1)) / scale
    return tf.clip_by_value(out, 0.0, tf.concat([width, height] * 2, axis=-1))


def random_affine_of(size: int, scale: tuple[float, float], flip: bool, translate: float = 0.0) -> callable:
    """Returns a function drawing a batch's affines [B, 4] (from its first example's seed): a random zoom in
    `scale`, a random position (a random crop when zoomed in, random padding when zoomed out) moved by up to
    `translate` x size more, and, if `flip`, a left-right flip with probability 1/2."""

    def draw(batch: dict) -> tf.Tensor:
        zoom = _uniform(batch, 1, *scale)
        slack = size - zoom * size  # < 0: the zoomed image overhangs and is cropped
        tx = _uniform(batch, 2, 0.0, 1.0) * slack + _uniform(batch, 10, -translate, translate) * size
        ty = _uniform(batch, 3, 0.0, 1.0) * slack + _uniform(batch, 11, -translate, translate) * size
        mirror = _uniform(batch, 4, 0.0, 1.0) < 0.5 if flip else tf.zeros_like(zoom, tf.bool)
        return tf.stack([tf.where(mirror, -zoom, zoom), zoom, tf.where(mirror, tx + zoom * size, tx), ty], 1)

    return draw


def random_affine(size: int, scale: tuple[float, float], flip: bool, ignore: int, translate: float = 0.0
                  ) -> callable:
    """Returns a batch function moving images, masks and boxes by `random_affine_of`'s draws."""
    draw = random_affine_of(size, scale, flip, translate)
    return lambda batch: _apply(batch, draw(batch), size, ignore)


def _select(use: tf.Tensor, chosen: dict, original: dict) -> dict:
    """Per example: `chosen` where `use`, else `original`."""
    def pick(a, b):
        return tf.where(tf.reshape(use, [-1] + [1] * (a.shape.rank - 1)), a, b)

    return {k: pick(chosen[k], original[k]) if k in chosen else v for k, v in original.items()}


def mosaic(size: int, probability: float, ignore: int) -> callable:
    """Returns a batch function: with `probability` per example, a 2x2 Mosaic, at half scale, of it and the
    examples a quarter, a half and three quarters of the batch further on.

    Each example takes part in four mosaics (once per quadrant), so a mosaic costs no extra decoding; batches
    letterboxed at size / 2 (the pipeline does so when every example is a mosaic) need no resampling either.
    The pipeline gives this step four batches at once and splits them after it, so that every training batch
    holds each example at most once. The boxes of the four are kept up to the batch's box count (the first
    ones, in quadrant order)."""
    half = size // 2

    def apply(batch: dict) -> dict:
        count = batch["image"].shape[0]
        small = batch if batch["image"].shape[1] == half else _apply(
            batch, tf.tile(tf.constant([[0.5, 0.5, 0.0, 0.0]]), [count, 1]), half, ignore)
        tiles = [{k: tf.roll(v, -quadrant * (count // 4), axis=0) for k, v in small.items()} for quadrant in range(4)]
        mixed = {}
        for key in ("image", "mask"):
            if key in batch:
                top = tf.concat([tiles[0][key], tiles[1][key]], axis=2)
                mixed[key] = tf.concat([top, tf.concat([tiles[2][key], tiles[3][key]], axis=2)], axis=1)
        if "boxes" in batch:
            offsets = [(0.0, 0.0), (half, 0.0), (0.0, half), (half, half)]
            boxes = [tf.where(t["classes"][..., None] >= 0, t["boxes"] + [x, y, x, y], 0.0)
                     for t, (x, y) in zip(tiles, offsets)]
            mixed["boxes"], mixed["classes"] = geometry.compact_boxes(
                tf.concat(boxes, axis=1), tf.concat([t["classes"] for t in tiles], axis=1), batch["classes"].shape[1])
        if probability >= 1.0:
            return {**batch, **mixed}
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
