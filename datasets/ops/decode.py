"""Image decoding, resizing and cropping as small functions over dicts of tensors, and the integrity check
that every encoded image passes first.

Each function takes an example dict and returns a new one. An example holds either "encoded" (file bytes)
or "image" (uint8 pixels, any channel count). JPEG training crops use the fused
`tf.image.decode_and_crop_jpeg`, which decodes only the pixels of the crop window; `check_encoded` makes a
truncated file fail with its name (the fused crop alone would decode its intact part without complaint).
JPEGs much larger than their destination are decoded at a DCT scale (1/2, 1/4 or 1/8; `DCT_RATIOS`) that keeps
them at least as large as the output: libjpeg skips most of the inverse DCT and the resize most of its input.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

ExampleFn = Callable[[dict], dict]

PNG_END = b"IEND\xaeB`\x82"
BAD_FILE = "bad image file (empty, not an image, or cut short)"  # check_encoded's message, before the file


# What a complete file looks like in its first 8 and last 16 bytes (-1: any byte): JPEG's start (its end marker
# is checked apart: it may sit anywhere in the last 16 bytes), PNG's signature and IEND chunk, GIF, BMP.
_EDGE_SIGNATURES = np.array([[0xFF, 0xD8, 0xFF] + [-1] * 21,
                             list(b"\x89PNG\r\n\x1a\n") + [-1] * 8 + list(PNG_END),
                             list(b"GIF") + [-1] * 21,
                             list(b"BM") + [-1] * 22], np.int32)


def check_encoded(example: dict) -> dict:
    """Asserts that "encoded" is a complete JPEG (end marker within its last 16 bytes) or PNG (ends with IEND),
    or a GIF/BMP; the failure names example["id"]. Reads 24 bytes of the file in a few small ops; examples of
    pixels ("image") pass unchanged."""
    if "encoded" not in example:
        return example
    encoded = example["encoded"]
    length = tf.strings.length(encoded)
    edges = tf.strings.reduce_join(tf.strings.substr(encoded, tf.stack([0, tf.maximum(length - 16, 0)]), [8, 16]))
    edge_bytes = tf.cast(tf.io.decode_raw(tf.strings.join([edges, b"\x00" * 24]), tf.uint8)[:24], tf.int32)
    matches = tf.reduce_all((edge_bytes == _EDGE_SIGNATURES) | (_EDGE_SIGNATURES < 0), axis=1)
    jpeg_end = tf.reduce_any(edge_bytes[8:23] * 256 + edge_bytes[9:24] == 0xFFD9)
    valid = (length >= 24) & tf.reduce_any(matches & tf.stack([jpeg_end, True, True, True]))
    check = tf.debugging.Assert(valid, [f"{BAD_FILE}:", example["id"]])
    with tf.control_dependencies([check]):
        return {**example, "encoded": tf.identity(encoded)}


def _decode_any(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF (first frame) or BMP to uint8 RGB; grey, RGBA and palette become RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _rgb(image: tf.Tensor) -> tf.Tensor:
    """Grey becomes RGB, RGBA loses alpha; the channel count must be static."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    return image[..., :3] if channels == 4 else image


def pixels(example: dict) -> tf.Tensor:
    """The example's uint8 RGB pixels: its "image", or its "encoded" file decoded whole."""
    return _rgb(example["image"]) if "image" in example else _decode_any(example["encoded"])


def _without_encoded(example: dict, image: tf.Tensor) -> dict:
    return {k: v for k, v in example.items() if k != "encoded"} | {"image": image}


def _to_uint8_size(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize of uint8 pixels, rounded back to uint8 (bilinear stays within [0, 255]: no clip)."""
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
    return tf.cast(resized + 0.5, tf.uint8)


def _random_crop_window(image_shape: tf.Tensor, scale: tuple[float, float], seed: tf.Tensor) -> tf.Tensor:
    """A random [y, x, h, w] crop covering `scale` of the area with aspect ratio in [3/4, 4/3]."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


DCT_RATIOS = (2, 4, 8)  # the JPEG DCT scales 1/2, 1/4, 1/8 that decoding may use; () decodes at full scale


def decode_resize(image_size: int, dct_ratios: tuple[int, ...] = DCT_RATIOS) -> ExampleFn:
    """Returns a function decoding "encoded" into "image", resized to image_size x image_size uint8, with the
    file's "original_size" [h, w]. A JPEG is decoded at the DCT scale (of `dct_ratios`) whose shorter side
    stays >= image_size."""

    def apply(example: dict) -> dict:
        if "encoded" in example:
            image, original = _decode_at_least(example["encoded"], image_size, tf.reduce_min, dct_ratios)
        else:
            image = _rgb(example["image"])
            original = tf.shape(image)[:2]
        return _without_encoded(example, _to_uint8_size(image, image_size)) | {"original_size": original}

    return apply


def _dct_ratio(extent: tf.Tensor, size: int, dct_ratios: tuple[int, ...]) -> tf.Tensor:
    """The largest of 1 and `dct_ratios` by which `extent` (pixels) shrinks to no less than `size`."""
    ratios = tf.constant((1, *dct_ratios))
    return tf.reduce_max(tf.where(extent // ratios >= size, ratios, 1))


def _decode_at_least(encoded: tf.Tensor, size: int, side=tf.reduce_max, dct_ratios: tuple[int, ...] = DCT_RATIOS
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes an image, a JPEG at the largest DCT scale of `dct_ratios` whose `side` (reduce_max: longer,
    reduce_min: shorter) stays >= `size` (libjpeg then skips most of the inverse DCT and the resize's work, and
    averages the pixels it drops instead of aliasing them); returns it and the file's own [height, width]."""

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        original = tf.image.extract_jpeg_shape(encoded)[:2]
        ratio = _dct_ratio(side(original), size, dct_ratios)
        branches = {r: lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r) for r in (1, *dct_ratios)}
        return tf.case([(tf.equal(ratio, r), branch) for r, branch in branches.items()]), original

    def other() -> tuple[tf.Tensor, tf.Tensor]:
        image = _decode_any(encoded)
        return image, tf.shape(image)[:2]

    image, original = tf.cond(tf.io.is_jpeg(encoded), jpeg, other) if dct_ratios else other()
    image.set_shape([None, None, 3])
    return image, original


def decode_for_size(size: int, mask_classes: int = 256, ignore_value: int = 255,
                    dct_ratios: tuple[int, ...] = DCT_RATIOS) -> ExampleFn:
    """Returns a function decoding "encoded" into "image", no smaller than a `size` letterbox needs (see
    `_decode_at_least`), with "image_size" [h, w] of the original (and "boxes" in its pixels), and
    "mask_encoded" (a class-index PNG), if present, into "mask" [h, w, 1]. A mask whose size differs from its image's, or with a value that is
    neither a class (< mask_classes) nor `ignore_value`, stops the run naming both files."""

    def apply(example: dict) -> dict:
        if "encoded" in example:
            image, original = _decode_at_least(example["encoded"], size, tf.reduce_max, dct_ratios)
        else:
            image = _rgb(example["image"])
            original = tf.shape(image)[:2]
        out = {k: v for k, v in _without_encoded(example, image).items() if k not in ("mask_encoded", "mask_id")}
        out["image_size"] = original
        if "boxes_normalised" in example:  # fractions of the image (YOLO labels) to pixels
            height, width = tf.unstack(tf.cast(original, tf.float32))
            out["boxes"] = tf.where(example["boxes_normalised"], example["boxes"] * tf.stack([width, height] * 2),
                                    example["boxes"])
            del out["boxes_normalised"]
        if "mask_encoded" in example:
            mask = tf.io.decode_png(example["mask_encoded"], channels=1)
            same = tf.reduce_all(tf.equal(tf.shape(mask)[:2], original))
            size_check = tf.debugging.Assert(same, ["mask size differs from its image:", example["id"],
                                                    example["mask_id"]])
            values = tf.cast(mask, tf.int32)
            known = tf.reduce_all((values < mask_classes) | (values == ignore_value))
            value_check = tf.debugging.Assert(known, [f"mask value not a class (0-{mask_classes - 1}) nor the "
                                                      f"ignore value {ignore_value}:", tf.reduce_max(values),
                                                      example["mask_id"], "of", example["id"]])
            with tf.control_dependencies([size_check, value_check]):
                out["mask"] = tf.identity(mask)
        return out

    return apply


def _scaled_crop(encoded: tf.Tensor, window: tf.Tensor, ratio: int, image_size: int) -> tf.Tensor:
    """The crop `window` ([y, x, h, w] in the file's pixels, at least `ratio` x image_size on each side) of a JPEG
    decoded at DCT scale 1/`ratio` and resampled to image_size x image_size uint8, aligned to the window exactly
    (scaled pixel i covers the file's pixels [ratio i, ratio (i + 1)); whole scaled pixels are decoded around
    the window, and the resampling starts at its fractional edge)."""
    start, end = tf.cast(window[:2], tf.float32) / ratio, tf.cast(window[:2] + window[2:], tf.float32) / ratio
    first = tf.cast(tf.floor(start), tf.int32)
    extent = tf.cast(tf.math.ceil(end), tf.int32) - first  # within the scaled image, ceil(side / ratio)
    crop = tf.image.decode_and_crop_jpeg(encoded, tf.concat([first, extent], 0), channels=3, ratio=ratio)
    # tf.image.resize's sampling (half-pixel centres) of the window, in crop_and_resize's corner-aligned terms
    step = (end - start) / image_size
    low = start - tf.cast(first, tf.float32) + step / 2 - 0.5
    high = low + step * (image_size - 1)
    limit = tf.cast(extent, tf.float32) - 1.0
    box = tf.concat([low / limit, high / limit], 0)  # y0, x0, y1, x1
    out = tf.image.crop_and_resize(tf.cast(crop, tf.float32)[None], box[None], [0], [image_size, image_size])[0]
    return tf.cast(out + 0.5, tf.uint8)


def decode_random_crop(image_size: int, scale: tuple[float, float], dct_ratios: tuple[int, ...] = DCT_RATIOS
                       ) -> ExampleFn:
    """Returns a function decoding a random-resized crop of "encoded" (fused for JPEG, at a DCT scale of
    `dct_ratios` when the crop is at least twice image_size) into "image".

    The example must carry a stateless "seed" ([2] int); the crop is a function of it alone.
    """
    crop_pixels = random_resized_crop(image_size, scale)

    def apply(example: dict) -> dict:
        if "encoded" not in example:
            return crop_pixels(example)
        encoded = example["encoded"]

        def jpeg() -> tf.Tensor:
            window = _random_crop_window(tf.image.extract_jpeg_shape(encoded), scale, example["seed"])
            ratio = _dct_ratio(tf.reduce_min(window[2:]), image_size, dct_ratios)

            def full_scale() -> tf.Tensor:
                return _to_uint8_size(tf.image.decode_and_crop_jpeg(encoded, window, channels=3), image_size)

            branches = [(tf.equal(ratio, r), lambda r=r: _scaled_crop(encoded, window, r, image_size))
                        for r in dct_ratios]
            return tf.case(branches, default=full_scale) if branches else full_scale()

        def other() -> tf.Tensor:
            image = _decode_any(encoded)
            window = _random_crop_window(tf.shape(image), scale, example["seed"])
            return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

        image = tf.cond(tf.io.is_jpeg(encoded), jpeg, lambda: _to_uint8_size(other(), image_size))
        return _without_encoded(example, tf.ensure_shape(image, [image_size, image_size, 3]))

    return apply


def random_resized_crop(image_size: int, scale: tuple[float, float]) -> ExampleFn:
    """Returns a function cropping "image" pixels like `decode_random_crop` (for cached or array data)."""

    def apply(example: dict) -> dict:
        image = _rgb(example["image"])
        window = _random_crop_window(tf.shape(image), scale, example["seed"])
        image = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])
        return {**example, "image": _to_uint8_size(image, image_size)}

    return apply


def random_flip(example: dict) -> dict:
    """Flips "image" left-right with probability 1/2, decided by the example's "seed"."""
    seed = tf.random.experimental.stateless_fold_in(example["seed"], 1)
    return {**example, "image": tf.image.stateless_random_flip_left_right(example["image"], seed)}
