"""What every data source is made of, and the helpers the sources share (each written once here).

A source has splits. Every split knows its size and yields, for one input pipeline, one epoch of records:
dicts with "encoded" (image file bytes) or "image" (uint8 pixels), "label" (int32) and "id" (a string that
names the example in errors: its path, or its file and index). Asked for more `Targets`, a split adds
"mask_encoded" (a class-index PNG) and "boxes" (float32 [max_boxes, 4], x0 y0 x1 y1 pixels, or fractions of
the image with "boxes_normalised") with "classes" (int32 [max_boxes], -1 for padding). The streaming pipeline
(`datasets/pipeline.py`) decodes, caches, augments and batches them, the same way for every source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import tensorflow as tf

from datasets.budget import shuffle_buffer_size

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as keras.utils.image_dataset_from_directory
SPLIT_DIRECTORY_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid", "test")}


class DataError(ValueError):
    """Bad input data; the message names the file or directory at fault."""


@dataclasses.dataclass(frozen=True)
class Targets:
    """What records carry besides the image and its label: masks, and boxes padded to `max_boxes`."""

    masks: bool = False
    max_boxes: int = 0  # 0: no boxes

    def require_none(self, source: str) -> None:
        """Raises DataError when masks or boxes are asked of a `source` that has none."""
        if self.masks or self.max_boxes:
            raise DataError(f"{source} has no {'masks' if self.masks else 'boxes'}")


Parse = Callable[[Any], dict] | None  # a stream element to a record (reads files, parses); None: it is one


class Split(Protocol):
    """What the pipeline needs of a split (see the module docstring)."""

    in_memory: bool  # records hold decoded pixels in memory: a cache of them gains nothing

    def __len__(self) -> int: ...

    def stream(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
               targets: Targets = Targets()) -> tuple[tf.data.Dataset, Parse]:
        """One epoch of this pipeline's share as stored (paths, serialized records) and the function making
        each element a record: the training pipeline runs it inside its own first map (a map of its own cost
        a few percent of the plain pipeline's CPU). Reshuffled every iteration when `shuffle`."""

    def epochs(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
               ) -> tuple[tf.data.Dataset, Parse]:
        """Training's stream: this pipeline's share of every epoch in turn, each in an order that is a function of
        (seed, epoch) alone, so that a resumed run sees what an uninterrupted one saw; and the parse function."""

    def first_epoch(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
                    ) -> tuple[tf.data.Dataset, Parse]:
        """Epoch 0 of `epochs` alone (it ends), and the parse function: the order a training cache fills in."""

    def records(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
                targets: Targets = Targets()) -> tf.data.Dataset:
        """One epoch of this pipeline's share as records: `stream`, parsed."""

    def most_boxes(self) -> int:
        """The most boxes in one image of the split (0 without boxes)."""


class Streamed:
    """`records` from `stream`, for every split; `epochs` from a `stream` that takes the epoch (a tensor) and
    shuffles by (seed, epoch) with it (`epoch_shuffle`)."""

    in_memory = False

    def epochs(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
               ) -> tuple[tf.data.Dataset, Parse]:
        """Training's stream (see `Split.epochs`): `stream` of epoch 0, 1, ..."""
        _, parse = self.stream(context, seed, True, targets)
        return every_epoch(lambda epoch: self.stream(context, seed, True, targets, epoch)[0]), parse

    def first_epoch(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
                    ) -> tuple[tf.data.Dataset, Parse]:
        """Epoch 0 of `epochs` alone (see `Split.first_epoch`)."""
        return self.stream(context, seed, True, targets, tf.constant(0, tf.int64))

    def records(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
                targets: Targets = Targets()) -> tf.data.Dataset:
        """One epoch of this pipeline's share as records: `stream`, parsed."""
        ds, parse = self.stream(context, seed, shuffle, targets)
        return ds if parse is None else ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


class Tabled(Streamed):
    """A split whose rows are held as columns in memory (`table`): any chunk of any epoch reads on its own."""

    def table(self, targets: Targets = Targets()) -> dict[str, np.ndarray]:
        """The split's rows as columns."""
        raise NotImplementedError

    def epochs(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
               ) -> tuple[tf.data.Dataset, Parse]:
        """Training's stream (see `Split.epochs`): every n-th row of each epoch's order (`epoch_rows`). The table
        enters as the element of a one-element dataset: captured by the epoch function instead, it became a
        constant of that function, and 47 MB of Fashion-MNIST took 4 s to trace and start (measured)."""
        pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
        epochs_and_table = tf.data.Dataset.zip(tf.data.Dataset.range(2**62),
                                               tf.data.Dataset.from_tensors(self.table(targets)).repeat())
        return epochs_and_table.flat_map(lambda epoch, table: rows_dataset(
            table, epoch_rows(len(self), seed, epoch, pipeline_id, pipelines))), self.parse

    def first_epoch(self, context: tf.distribute.InputContext, seed: int, targets: Targets = Targets()
                    ) -> tuple[tf.data.Dataset, Parse]:
        """Epoch 0 of `epochs` alone (see `Split.first_epoch`)."""
        rows = epoch_rows(len(self), seed, 0, context.input_pipeline_id, context.num_input_pipelines)
        return rows_dataset(self.table(targets), rows), self.parse

    def service_chunks(self, examples_per_chunk: int) -> int:
        """How many chunks an epoch has for the tf.data service: about `examples_per_chunk` rows each."""
        return max(1, len(self) // examples_per_chunk)

    def service_chunk(self, index: tf.Tensor, chunks: int, seed: int, targets: Targets) -> tf.data.Dataset:
        """(row, position) pairs of chunk `index` of the training stream (epoch index // chunks): every
        `chunks`-th row of the epoch's order (`epoch_rows`) from the (index % chunks)-th on; a row's position
        is epoch x N + its place in that order."""
        epoch, share = index // chunks, index % chunks
        rows = epoch_rows(len(self), seed, epoch, share, chunks)
        positions = epoch * len(self) + share + chunks * tf.range(tf.size(rows, out_type=tf.int64))
        rows_and_positions = (rows_dataset(self.table(targets), rows), tf.data.Dataset.from_tensor_slices(positions))
        return tf.data.Dataset.zip(rows_and_positions)


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


@dataclasses.dataclass
class Examples(Tabled):
    """One split of loose image files: parallel lists, one entry per image."""

    paths: list[str]
    labels: list[int]
    mask_paths: list[str] | None = None
    boxes: list[np.ndarray] | None = None  # per image: float32 [n, 4] x0, y0, x1, y1 in pixels
    box_classes: list[np.ndarray] | None = None  # per image: int32 [n]
    boxes_normalised: bool = False  # boxes are fractions of the image size (YOLO labels): decoding scales them

    def __len__(self) -> int:
        return len(self.paths)

    def parse(self, row: dict) -> dict:
        """A row of `table` as a record: its files read."""
        return _read_files(row)

    def table(self, targets: Targets = Targets()) -> dict[str, np.ndarray]:
        """The split's rows as columns: "id" (the path), "label", and the `targets` asked for."""
        table = {"id": np.asarray(self.paths, dtype=object).astype(str), "label": np.asarray(self.labels, np.int32)}
        if targets.masks:
            if self.mask_paths is None:
                raise DataError(f"no masks for the images of {os.path.dirname(self.paths[0])}")
            table["mask_id"] = np.asarray(self.mask_paths, dtype=object).astype(str)
        if targets.max_boxes:
            table["boxes"], table["classes"] = self.padded_boxes(targets.max_boxes)
            if self.boxes_normalised:
                table["boxes_normalised"] = np.ones(len(self), bool)
        return table

    def stream(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
               targets: Targets = Targets()) -> tuple[tf.data.Dataset, Parse]:
        """One epoch of this pipeline's files (paths, read by the parse function): a seeded order shared by all
        pipelines, then a disjoint shard, reshuffled every iteration when `shuffle`."""
        table = self.table(targets)
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        ds = tf.data.Dataset.from_tensor_slices({key: column[order] for key, column in table.items()})
        if context.num_input_pipelines > 1:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        if shuffle:
            ds = epoch_shuffle(ds, len(self), seed, context, None)
        return ds, self.parse

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

    def most_boxes(self) -> int:
        """The most boxes in one image (0 without boxes)."""
        return max((len(classes) for classes in self.box_classes or []), default=0)

    def subset(self, indices: Sequence[int]) -> Examples:
        """The examples at `indices`, every per-image list kept aligned."""
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return Examples(pick(self.paths), pick(self.labels), pick(self.mask_paths), pick(self.boxes),
                        pick(self.box_classes), self.boxes_normalised)


def _read_files(record: dict) -> dict:
    read = {"encoded": tf.io.read_file(record["id"])}
    if "mask_id" in record:
        read["mask_encoded"] = tf.io.read_file(record["mask_id"])
    return {**record, **read}


def seeded_split(examples: Examples, val_fraction: float, seed: int, source: str) -> dict[str, Examples]:
    """{"train", "val"}: `val_fraction` of the examples (at least one, never all), chosen by `seed`, held out;
    for sources whose layout has no split of its own."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val_fraction={val_fraction} must be in (0, 1) to split {source}")
    if len(examples) < 2:
        raise DataError(f"{source}: {len(examples)} examples; need at least 2 (train and val)")
    order = np.random.default_rng(seed).permutation(len(examples))
    num_val = min(max(1, round(len(examples) * val_fraction)), len(examples) - 1)
    return {"train": examples.subset(sorted(order[num_val:])), "val": examples.subset(sorted(order[:num_val]))}


def read_class_names(path: str) -> list[str] | None:
    """The names in a class-name file (classes.txt: one a line, in index order), or None without the file."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return [line.strip() for line in f if line.strip()]


def list_images(folder: str, others: list[str] | None = None) -> list[str]:
    """The image files (IMAGE_EXTENSIONS) anywhere under `folder` (any file system; local links followed),
    sorted; the paths of other files are appended to `others` when it is given."""
    found = []
    for dirpath, _, filenames in tf.io.gfile.walk(folder):
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
            elif others is not None:
                others.append(os.path.join(dirpath, name))
    return sorted(found)


def normalised(path: str) -> str:
    """`path` as os.path.normpath makes it ("a/./b/../c/" is "a/c"), a URL's "scheme://" kept whole (gs://,
    which os.path.normpath makes "gs:/")."""
    scheme, separator, rest = path.partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}" if separator else os.path.normpath(path)


def absolute(path: str) -> str:
    """`path` as os.path.abspath makes it; a URL, absolute already, `normalised`."""
    return normalised(path) if "://" in path else os.path.abspath(path)


def shard_warning(num_items: int, what: str, pipelines: int) -> None:
    """Logs that there are too few files to shard by file, so every pipeline reads all and keeps its share."""
    logging.warning("%d %s for %d input pipelines: sharding by example (every pipeline reads every file); "
                    "write at least %d shards for file-level sharding", num_items, what, pipelines, pipelines)


def epoch_rows(num_rows: int, seed: int, epoch: tf.Tensor, share: int | tf.Tensor, shares: int | tf.Tensor
               ) -> tf.Tensor:
    """The rows of share `share` of `shares` in epoch `epoch`: every `shares`-th row, from the `share`-th on, of
    a permutation of the split that is a function of (seed, epoch) alone. A split held as a table needs no
    shuffle buffer, and any share of any epoch can be read on its own (what the tf.data service splits)."""
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_rows, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return order[share::shares]


def every_epoch(one_epoch: Callable[[tf.Tensor], tf.data.Dataset], first: int = 0) -> tf.data.Dataset:
    """Epoch after epoch of `one_epoch(epoch)` from epoch `first` on (each shuffled as a function of its index:
    `epoch_shuffle`)."""
    return tf.data.Dataset.range(first, 2**62).flat_map(one_epoch)


def rows_dataset(table: dict[str, np.ndarray | tf.Tensor], rows: tf.Tensor) -> tf.data.Dataset:
    """The `rows` of `table`, one element each."""
    return tf.data.Dataset.from_tensor_slices({key: tf.gather(column, rows) for key, column in table.items()})


def epoch_shuffle(ds: tf.data.Dataset, buffer_size: int, seed: int, context: tf.distribute.InputContext,
                  epoch: tf.Tensor | None) -> tf.data.Dataset:
    """`ds` shuffled through `buffer_size` elements. With `epoch` (a tensor: inside the pipeline's loop over
    epochs) in an order that is a function of (seed, epoch, pipeline) alone, so that a resumed run sees the
    order an uninterrupted one saw: tf.data's reshuffle_each_iteration instead advances with every iterator
    made of the dataset, and Keras makes one more than it reads. Without `epoch`, reshuffled every iteration."""
    if epoch is None:
        return ds.shuffle(buffer_size, seed=seed + context.input_pipeline_id, reshuffle_each_iteration=True)
    # The shuffle op itself: Dataset.shuffle cannot take a tensor seed while TensorFlow's global seed is 0.
    specs = tf.nest.flatten(ds.element_spec)
    shuffled = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds), buffer_size=tf.constant(buffer_size, tf.int64),
        seed=tf.cast(epoch, tf.int64) * 1_000_003 + seed, seed2=tf.constant(context.input_pipeline_id + 1, tf.int64),
        seed_generator=tf.raw_ops.DummySeedGenerator(), output_types=[spec.dtype for spec in specs],
        output_shapes=[spec.shape for spec in specs], reshuffle_each_iteration=False)
    return tf.data.experimental.from_variant(shuffled, ds.element_spec)


def shuffle_share(ds: tf.data.Dataset, num_examples: int, bytes_per_example: int,
                  context: tf.distribute.InputContext, seed: int, epoch: tf.Tensor | None = None) -> tf.data.Dataset:
    """Shuffles this pipeline's share of `num_examples` (every epoch: `epoch_shuffle`) through a buffer holding
    the whole share or as much of it as the memory budget allows (`budget.shuffle_buffer_size`)."""
    share = -(-num_examples // context.num_input_pipelines)
    return epoch_shuffle(ds, shuffle_buffer_size(share, bytes_per_example), seed, context, epoch)
