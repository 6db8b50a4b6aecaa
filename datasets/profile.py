"""What the training data is like, measured on a sample of it: how many examples, the images' size, whether
they are grey, and how small the labelled objects are. `engine/plan.py` plans a run from it.

Object sizes are fractions of the image's longer side (the side a letterbox scales to the input size): a box's
shorter side, or, for masks, the square root of a class's area in an image (the side of a square as large).
The smallest objects are the smallest class's 10th percentile, over classes seen at least `MIN_OBJECTS` times.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from datasets.ops import decode
from datasets.sources.base import DataError, Split, Targets

SAMPLE = 256  # training examples measured
MIN_OBJECTS = 5  # a class needs this many objects in the sample to count for the smallest objects
PERCENTILE = 10


@dataclasses.dataclass(frozen=True)
class Profile:
    """The training split as measured (`measure`)."""

    num_train: int
    sampled: int
    height: int  # median over the sample
    width: int
    grey: bool  # every sampled image has R = G = B
    smallest_object: float | None = None  # fraction of the image's longer side; None without labelled objects
    smallest_class: str | None = None  # the class whose objects are that small
    largest_side: int | None = None  # the largest longer side in the sample, pixels; None: not measured

    @property
    def shorter_side(self) -> int:
        """The median image's shorter side, pixels."""
        return min(self.height, self.width)

    @property
    def longer_side(self) -> int:
        """The median image's longer side, pixels."""
        return max(self.height, self.width)


def _measured(record: dict) -> dict:
    """An example's image shape, greyness, and its boxes in pixels or its mask's per-class pixel counts."""
    image = decode.pixels(record)
    height, width = tf.unstack(tf.shape(image)[:2])
    out = {"shape": tf.stack([height, width]),
           "grey": tf.reduce_all(image[..., 0] == image[..., 1]) & tf.reduce_all(image[..., 1] == image[..., 2])}
    if "boxes" in record:
        scale = tf.cast(tf.stack([width, height] * 2), tf.float32)
        boxes = record["boxes"] * scale if "boxes_normalised" in record else record["boxes"]
        out["boxes"], out["classes"] = boxes, record["classes"]
    if "mask_encoded" in record:
        mask = tf.cast(tf.reshape(tf.io.decode_png(record["mask_encoded"], channels=1), [-1]), tf.int32)
        out["pixels"] = tf.math.bincount(mask, minlength=256, maxlength=256)
    return out


def _smallest(sizes: dict[int, list[float]], class_names: list[str]) -> tuple[float | None, str | None]:
    """The smallest per-class PERCENTILE of `sizes` {class: [fraction]} over the classes seen often enough (all
    classes when none is)."""
    counted = {k: v for k, v in sizes.items() if len(v) >= MIN_OBJECTS} or sizes
    if not counted:
        return None, None
    percentiles = {k: float(np.percentile(v, PERCENTILE)) for k, v in counted.items()}
    smallest = min(percentiles, key=percentiles.get)
    name = class_names[smallest] if 0 <= smallest < len(class_names) else str(smallest)
    return percentiles[smallest], name


def measure(split: Split, targets: Targets = Targets(), class_names: list[str] | None = None,
            ignore_value: int = 255, sample: int = SAMPLE) -> Profile:
    """Measures up to `sample` training examples of `split` (a seeded choice), with their boxes or masks when
    `targets` asks for them; `class_names` name the smallest objects' class."""
    records = split.records(tf.distribute.InputContext(), seed=0, shuffle=True, targets=targets).take(sample)
    # Files that do not decode are left out here; the pipeline, or --mode=inspect, names them.
    measured = records.map(_measured, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    shapes, grey, sizes = [], [], {}
    for example in measured.as_numpy_iterator():
        height, width = (int(v) for v in example["shape"])
        shapes.append((height, width))
        grey.append(bool(example["grey"]))
        longer = max(height, width)
        if "boxes" in example:
            for box, label in zip(example["boxes"], example["classes"]):
                if label >= 0:
                    sizes.setdefault(int(label), []).append(min(box[2] - box[0], box[3] - box[1]) / longer)
        if "pixels" in example:
            for label in np.flatnonzero(example["pixels"]):
                if label != ignore_value:
                    sizes.setdefault(int(label), []).append(float(np.sqrt(example["pixels"][label])) / longer)
    if not shapes:
        raise DataError(f"none of the {min(sample, len(split))} training images sampled decodes; --mode=inspect "
                        "lists the bad files")
    heights, widths = (np.asarray(v) for v in zip(*shapes))
    smallest, name = _smallest(sizes, class_names or [])
    return Profile(len(split), len(shapes), int(np.median(heights)), int(np.median(widths)),
                   bool(grey) and all(grey), smallest, name, int(max(heights.max(), widths.max())))
