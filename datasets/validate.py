"""Bad input: in-graph integrity checks that name the file, a full scan, and the `--mode=inspect` report.

Every encoded image passes `check_encoded` in the pipeline: empty files, unknown formats and JPEG/PNG files
cut short fail with an error naming the file (the fused JPEG crop alone would decode the intact part of a
truncated file without complaint). Damage inside a file surfaces when it is decoded; `scan` then finds and
names every bad file with one decode pass, which is also how `--skip_bad_files` drops them.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import tensorflow as tf

from datasets import decode
from datasets.box_sources import subset
from datasets.sources import Examples, Source

PNG_END = b"IEND\xaeB`\x82"


def check_encoded(example: dict) -> dict:
    """Asserts that "encoded" is a complete JPEG (end marker within its last 16 bytes) or PNG (ends with IEND),
    or a GIF/BMP; the failure names example["id"]. Costs a few small ops, no copy of the file."""
    encoded = example["encoded"]
    length = tf.strings.length(encoded)
    last16 = tf.strings.substr(encoded, tf.maximum(length - 16, 0), 16)
    tail = tf.io.decode_raw(tf.strings.substr(tf.strings.join([b"\x00" * 16, last16]), tf.strings.length(last16), 16),
                            tf.uint8)
    head = tf.strings.substr(encoded, 0, 8)
    jpeg_ok = tf.logical_and(tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
                             tf.reduce_any(tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9))))
    png_ok = tf.logical_and(head == b"\x89PNG\r\n\x1a\n", tf.strings.substr(last16, 8, 8) == PNG_END)
    other_ok = tf.logical_or(tf.strings.substr(head, 0, 3) == b"GIF", tf.strings.substr(head, 0, 2) == b"BM")
    valid = tf.logical_and(length >= 16, tf.logical_or(jpeg_ok, tf.logical_or(png_ok, other_ok)))
    check = tf.debugging.Assert(valid, ["bad image file (empty, not an image, or cut short):", example["id"]])
    with tf.control_dependencies([check]):
        return {**example, "encoded": tf.identity(encoded)}


@dataclasses.dataclass
class ScanResult:
    """What one decode pass over a split found."""

    bad: dict[str, str]  # id -> reason
    heights: np.ndarray
    widths: np.ndarray


def _reason(path: str) -> str:
    """Why `path` does not decode, in one line."""
    if not os.path.exists(path):
        return "missing"
    if os.path.getsize(path) == 0:
        return "zero bytes"
    data = tf.io.read_file(path)
    try:
        check_encoded({"encoded": data, "id": tf.constant(path)})
        decode.decode_resize(8)({"encoded": data})
    except tf.errors.OpError as error:
        return error.message.strip().splitlines()[0][:200]
    return "failed in the pipeline"


def _decoded_shape(record: dict) -> dict:
    image = tf.io.decode_image(check_encoded(record)["encoded"], channels=3, expand_animations=False)
    return {"id": record["id"], "shape": tf.shape(image)[:2]}


def scan(examples: Examples) -> ScanResult:
    """Decodes every file of `examples` once (in parallel) and reports the ones that fail, and image sizes."""
    ds = examples.records(tf.distribute.InputContext(), seed=0, shuffle=False).ignore_errors()
    ds = ds.map(_decoded_shape, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    good, heights, widths = set(), [], []
    for record in ds.as_numpy_iterator():
        good.add(record["id"].decode())
        heights.append(int(record["shape"][0]))
        widths.append(int(record["shape"][1]))
    bad = {path: _reason(path) for path in examples.paths if path not in good}
    return ScanResult(bad, np.asarray(heights), np.asarray(widths))


def without(examples: Examples, bad: set[str]) -> Examples:
    """`examples` minus the files in `bad` (labels, masks and boxes stay aligned)."""
    return subset(examples, [i for i, path in enumerate(examples.paths) if path not in bad])


def drop_bad_files(source: Source) -> dict[str, dict[str, str]]:
    """Scans every file-based split, removes its bad files in place, returns {split: {file: reason}}."""
    dropped = {}
    for name, split in source.splits.items():
        if isinstance(split, Examples):
            bad = scan(split).bad
            if bad:
                source.splits[name] = without(split, set(bad))
            dropped[name] = bad
    return dropped


def inspect(source: Source) -> dict:
    """A report per split: examples per class, image sizes, bad files, and files listed but missing."""
    report = {"dataset": source.name, "class_names": source.class_names, "splits": {}}
    for name, split in source.splits.items():
        labels = getattr(split, "labels", None)
        entry: dict = {"examples": len(split)}
        if labels is not None and source.image_labels:
            counts = collections.Counter(int(label) for label in labels)
            entry["per_class"] = {source.class_names[c]: counts.get(c, 0) for c in range(len(source.class_names))}
            entry["empty_classes"] = [n for n, count in entry["per_class"].items() if count == 0]
        if isinstance(split, Examples):
            result = scan(split)
            entry["bad_files"] = {path: reason for path, reason in result.bad.items() if reason != "missing"}
            entry["labels_without_images"] = sorted(p for p, reason in result.bad.items() if reason == "missing")
            if len(result.heights):
                entry["image_size"] = {axis: {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}
                                       for axis, v in (("height", result.heights), ("width", result.widths))}
        report["splits"][name] = entry
    report.update(source.notes)
    return report
