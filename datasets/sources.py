"""Data sources: where examples come from, before any decoding.

A source has splits. Every split knows its size and yields, for one input pipeline, one epoch of records:
dicts with "encoded" (image file bytes) or "image" (uint8 pixels), "label" (int32) and "id" (a string that
names the example in errors: its path, or its file and index). Asked for more `Targets`, a split adds
"mask_encoded" (a class-index PNG) and "boxes" (float32 [max_boxes, 4], x0 y0 x1 y1 pixels, or fractions of
the image with "boxes_normalised") with "classes" (int32 [max_boxes], -1 for padding). The streaming pipeline
(`datasets/pipeline.py`) decodes, caches, augments and batches them, the same way for every source.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Protocol

import numpy as np
import tensorflow as tf

from datasets import shapes
from datasets.budget import shuffle_buffer_size

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as keras.utils.image_dataset_from_directory
SPLIT_DIRECTORY_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid", "test")}


def shard_warning(num_items: int, what: str, pipelines: int) -> None:
    """Logs that there are too few files to shard by file, so every pipeline reads all and keeps its share."""
    logging.warning("%d %s for %d input pipelines: sharding by example (every pipeline reads every file); "
                    "write at least %d shards for file-level sharding", num_items, what, pipelines, pipelines)


def shuffle_share(ds: tf.data.Dataset, num_examples: int, bytes_per_example: int,
                  context: tf.distribute.InputContext, seed: int) -> tf.data.Dataset:
    """Reshuffles this pipeline's share of `num_examples` every epoch, through a buffer holding the whole
    share or as much of it as the memory budget allows (`budget.shuffle_buffer_size`)."""
    share = -(-num_examples // context.num_input_pipelines)
    return ds.shuffle(shuffle_buffer_size(share, bytes_per_example), seed=seed + context.input_pipeline_id,
                      reshuffle_each_iteration=True)


@dataclasses.dataclass(frozen=True)
class Targets:
    """What records carry besides the image and its label: masks, and boxes padded to `max_boxes`."""

    masks: bool = False
    max_boxes: int = 0  # 0: no boxes

    def require_none(self, source: str) -> None:
        """Raises DataError when masks or boxes are asked of a `source` that has none."""
        if self.masks or self.max_boxes:
            raise DataError(f"{source} has no {'masks' if self.masks else 'boxes'}")


@dataclasses.dataclass
class Examples:
    """One split of loose image files: parallel lists, one entry per image."""

    paths: list[str]
    labels: list[int]
    mask_paths: list[str] | None = None
    boxes: list[np.ndarray] | None = None  # per image: float32 [n, 4] x0, y0, x1, y1 in pixels
    box_classes: list[np.ndarray] | None = None  # per image: int32 [n]
    boxes_normalised: bool = False  # boxes are fractions of the image size (YOLO labels): decoding scales them

    def __len__(self) -> int:
        return len(self.paths)

    def records(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
                targets: Targets = Targets()) -> tf.data.Dataset:
        """One epoch of this pipeline's files: a seeded order shared by all pipelines, then a disjoint shard,
        reshuffled every epoch (a full shuffle: the buffer holds only paths and labels)."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        table = {"id": np.asarray(self.paths, dtype=object)[order].astype(str),
                 "label": np.asarray(self.labels, dtype=np.int32)[order]}
        if targets.masks:
            if self.mask_paths is None:
                raise DataError(f"no masks for the images of {os.path.dirname(self.paths[0])}")
            table["mask_id"] = np.asarray(self.mask_paths, dtype=object)[order].astype(str)
        if targets.max_boxes:
            boxes, classes = self.padded_boxes(targets.max_boxes)
            table["boxes"], table["classes"] = boxes[order], classes[order]
            if self.boxes_normalised:
                table["boxes_normalised"] = np.ones(len(self), bool)
        ds = tf.data.Dataset.from_tensor_slices(table)
        if context.num_input_pipelines > 1:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed + context.input_pipeline_id, reshuffle_each_iteration=True)
        return ds.map(_read_files, num_parallel_calls=tf.data.AUTOTUNE)

    def padded_boxes(self, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N, max_boxes, 4] and classes [N, max_boxes] (-1 for padding) of every image."""
        if self.boxes is None or self.box_classes is None:
            raise DataError(f"no boxes for the images of {os.path.dirname(self.paths[0])}")
        boxes = np.zeros((len(self), max_boxes, 4), np.float32)
        classes = np.full((len(self), max_boxes), -1, np.int32)
        for i, (image_boxes, image_classes) in enumerate(zip(self.boxes, self.box_classes)):
            if len(image_classes) > max_boxes:
                raise DataError(f"{self.paths[i]} has {len(image_classes)} boxes, more than --max_boxes={max_boxes}")
            boxes[i, :len(image_classes)], classes[i, :len(image_classes)] = image_boxes, image_classes
        return boxes, classes


def _read_files(record: dict) -> dict:
    read = {"encoded": tf.io.read_file(record["id"])}
    if "mask_id" in record:
        read["mask_encoded"] = tf.io.read_file(record["mask_id"])
    return {**record, **read}


class Split(Protocol):
    """What the pipeline needs of a split (see the module docstring)."""

    def __len__(self) -> int: ...

    def records(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
                targets: Targets = Targets()) -> tf.data.Dataset: ...


@dataclasses.dataclass
class Source:
    """A dataset: class names and its splits."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # findings for --mode=inspect
    mask_class_names: list[str] = dataclasses.field(default_factory=list)  # mask value i is class i; [] no masks
    box_class_names: list[str] = dataclasses.field(default_factory=list)  # box class i; [] no boxes
    image_labels: bool = True  # False: "label" means nothing (detection-only data such as VOC or YOLO labels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


class DataError(ValueError):
    """Bad input data; the message names the file or directory at fault."""


def _read_shapes_split(root: str, split: str) -> Examples:
    with open(os.path.join(root, split, "annotations.json")) as f:
        records = json.load(f)["examples"]
    base = os.path.join(root, split)
    return Examples(
        paths=[os.path.join(base, r["image"]) for r in records],
        labels=[int(r["label"]) for r in records],
        mask_paths=[os.path.join(base, r["mask"]) for r in records],
        boxes=[np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records],
        box_classes=[np.asarray(r["box_classes"], np.int32) for r in records],
    )


def shapes_source(directory: str) -> Source:
    """The generated shapes dataset at `directory`, generating it first if it is not there yet."""
    shapes.generate(directory)
    with open(os.path.join(directory, "metadata.json")) as f:
        metadata = json.load(f)
    splits = {split: _read_shapes_split(directory, split) for split in ("train", "val")}
    return Source("shapes", list(metadata["classes"]), splits, mask_class_names=["background", *metadata["classes"]],
                  box_class_names=list(metadata["classes"]))


def _list_class_folder(root: str, notes: dict[str, list[str]]) -> tuple[list[str], list[str], list[int]]:
    """Lists images under root/<class>/..., classes sorted like image_dataset_from_directory. Images outside
    any class folder and non-image files inside them go to `notes` (they are not used)."""
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    class_names = sorted(e.name for e in entries if e.is_dir())
    if not class_names:
        raise DataError(f"{root}: no class sub-folders (expected one sub-folder of images per class)")
    notes.setdefault("images_without_labels", []).extend(
        sorted(e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)))
    paths, labels = [], []
    for label, name in enumerate(class_names):
        found = []
        for dirpath, _, filenames in os.walk(os.path.join(root, name), followlinks=True):
            for f in filenames:
                (found if f.lower().endswith(IMAGE_EXTENSIONS) else notes.setdefault("ignored_files", [])).append(
                    os.path.join(dirpath, f))
        paths += sorted(found)
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in {class_names}")
    return class_names, paths, labels


def _split_directories(root: str) -> dict[str, str] | None:
    """Returns {"train": dir, "val": dir} when root holds pre-split sub-folders, else None."""
    found = {}
    for split, names in SPLIT_DIRECTORY_NAMES.items():
        for name in names:
            if os.path.isdir(os.path.join(root, name)):
                found[split] = os.path.join(root, name)
                break
    return found if "train" in found and "val" in found else None


def folder_source(directory: str, val_fraction: float, seed: int) -> Source:
    """One sub-folder per class; `train/` and `val/` sub-folders if present, else a seeded split."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a directory (--dataset=folder:PATH needs a folder of class folders)")
    split_dirs = _split_directories(directory)
    notes: dict[str, list[str]] = {}
    name = os.path.basename(os.path.normpath(directory))
    if split_dirs:
        class_names, train_paths, train_labels = _list_class_folder(split_dirs["train"], notes)
        val_classes, val_paths, val_labels = _list_class_folder(split_dirs["val"], notes)
        if val_classes != class_names:
            raise DataError(f"{split_dirs['val']}: class folders {val_classes} differ from "
                            f"{split_dirs['train']}: {class_names}")
        splits = {"train": Examples(train_paths, train_labels), "val": Examples(val_paths, val_labels)}
        return Source(name, class_names, splits, notes)
    class_names, paths, labels = _list_class_folder(directory, notes)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val_fraction={val_fraction} must be in (0, 1) to split {directory}")
    order = np.random.default_rng(seed).permutation(len(paths))
    num_val = max(1, int(round(len(paths) * val_fraction)))
    pick = lambda idx: Examples([paths[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    splits = {"train": pick(sorted(order[num_val:])), "val": pick(sorted(order[:num_val]))}
    return Source(name, class_names, splits, notes)
