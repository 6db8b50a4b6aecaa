"""Bad files and the data report: finding and naming files that do not decode, leaving them out, and the
`--mode=inspect` report.

Every encoded image passes `decode.check_encoded` in the pipeline, so empty, unknown and cut-short files fail
there with their name. Damage inside a file surfaces when it is decoded; `scan` then finds and names every
bad file with one decode pass, which is also how `--skip_bad_files` drops them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf

from datasets.ops import decode
from datasets.sources.base import DataError, Examples, Source


@dataclasses.dataclass
class ScanResult:
    """What one decode pass over a split found."""

    bad: dict[str, str]  # id -> reason
    heights: np.ndarray
    widths: np.ndarray


def reason(path: str) -> str:
    """Why `path` does not decode, in one line."""
    if not tf.io.gfile.exists(path):
        return "missing"
    if tf.io.gfile.stat(path).length == 0:
        return "zero bytes"
    data = tf.io.read_file(path)
    try:
        decode.check_encoded({"encoded": data, "id": tf.constant(path)})
        decode.decode_resize(8)({"encoded": data})
    except tf.errors.OpError as error:
        return decode.BAD_FILE if decode.BAD_FILE in error.message else error.message.strip().splitlines()[0][:200]
    return "failed in the pipeline"


def _decoded_shape(record: dict) -> dict:
    image = tf.io.decode_image(decode.check_encoded(record)["encoded"], channels=3, expand_animations=False)
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
    bad = {path: reason(path) for path in examples.paths if path not in good}
    return ScanResult(bad, np.asarray(heights), np.asarray(widths))


def drop_bad_files(source: Source) -> dict[str, dict[str, str]]:
    """Scans every file-based split, removes its bad files in place, returns {split: {file: reason}}."""
    dropped = {}
    for name, split in source.splits.items():
        if isinstance(split, Examples):
            bad = scan(split).bad
            if bad:
                source.splits[name] = split.subset([i for i, path in enumerate(split.paths) if path not in bad])
            dropped[name] = bad
    return dropped


@contextlib.contextmanager
def naming_bad_files(source: Source) -> Iterator[None]:
    """Turns a decode failure inside tf.data into a DataError that names the bad files of `source`."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        named = error.message.split(f"{decode.BAD_FILE}:")
        if len(named) > 1:
            bad = named[1].strip().split("\n")[0].strip()
            raise DataError(f"{bad}: {decode.BAD_FILE}; fix or remove it, or pass --skip_bad_files") from None
        found = {path: reason for split in source.splits.values() if isinstance(split, Examples)
                 for path, reason in scan(split).bad.items()}
        if not found:
            raise
        listing = "".join(f"\n  {path}: {reason}" for path, reason in sorted(found.items()))
        raise DataError(f"{len(found)} image files do not decode (pass --skip_bad_files to leave them out):"
                        f"{listing}") from None


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


def report_lines(report: dict, notes: dict[str, list[str]]) -> list[str]:
    """The `inspect` report as the lines `--mode=inspect` prints."""
    lines = [f"[inspect] {report['dataset']}: {len(report['class_names'])} classes"]
    for name, entry in report["splits"].items():
        lines.append(f"[inspect] {name}: {entry['examples']} examples")
        lines += [f"    {class_name:24s} {count}" for class_name, count in entry.get("per_class", {}).items()]
        if "image_size" in entry:
            size = entry["image_size"]
            lines.append(f"    image height min/median/max {size['height']['min']}/{size['height']['median']:g}/"
                         f"{size['height']['max']}, width {size['width']['min']}/{size['width']['median']:g}/"
                         f"{size['width']['max']}")
        for key in ("bad_files", "labels_without_images", "empty_classes"):
            if entry.get(key):
                lines.append(f"    {key}: {len(entry[key])}" + "".join(f"\n      {item}" for item in entry[key]))
    for key, items in notes.items():
        if items:
            lines.append(f"[inspect] {key}: {len(items)}" + "".join(f"\n      {item}" for item in items))
    return lines
