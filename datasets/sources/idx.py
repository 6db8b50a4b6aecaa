"""`idx:DIR`: MNIST-format IDX files (gzip or not), e.g. MNIST and Fashion-MNIST.

DIR holds train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz]; the t10k files are the validation split. Class names come from DIR/classes.txt
(one per line) when present, else "0", "1", ... The images live in memory as uint8 arrays.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import tensorflow as tf

from datasets.sources.base import (DataError, Parse, Source, Tabled, Targets, normalised, read_class_names,
                                   shuffle_share)

IDX_DTYPES = {0x08: np.uint8}
PREFIXES = {"train": "train", "val": "t10k"}


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed) into an array of its declared shape."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = gzip.GzipFile(fileobj=f).read() if path.endswith(".gz") else f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, dtype=IDX_DTYPES[data[2]], offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header declares shape {shape} but holds {body.size} values (truncated?)")
    return body.reshape(shape)


def _find(directory: str, prefix: str, kind: str) -> str:
    for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
        if tf.io.gfile.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise DataError(f"{directory}: no {prefix}-{kind}[.gz] (an idx:DIR needs train-* and t10k-* "
                    "images-idx3-ubyte and labels-idx1-ubyte files)")


@dataclasses.dataclass
class ArraySplit(Tabled):
    """One split held in memory: uint8 images [n, h, w, c] and int labels [n]."""

    in_memory = True

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    parse = None  # rows are records already

    def table(self, targets: Targets = Targets()) -> dict[str, np.ndarray]:
        """The split's rows as columns: "image", "label" and "id" (NAME[i])."""
        targets.require_none("IDX data")
        return {"image": self.images, "label": self.labels.astype(np.int32),
                "id": np.char.add(f"{self.name}[", np.char.add(np.arange(len(self)).astype(str), "]"))}

    def stream(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
               targets: Targets = Targets()) -> tuple[tf.data.Dataset, Parse]:
        """One epoch of this pipeline's share, records already: every n-th example, reshuffled every iteration
        when `shuffle`."""
        ds = tf.data.Dataset.from_tensor_slices(self.table(targets))
        if context.num_input_pipelines > 1:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        if shuffle:
            ds = shuffle_share(ds, len(self), self.images[0].nbytes, context, seed)
        return ds, None

    def most_boxes(self) -> int:
        """0: IDX files carry no boxes."""
        return 0


def idx_source(directory: str) -> Source:
    """The IDX files in `directory` as train and val splits."""
    if not tf.io.gfile.isdir(directory):
        raise DataError(f"{directory}: not a directory (--dataset=idx:DIR)")
    splits = {}
    for split, prefix in PREFIXES.items():
        images_path = _find(directory, prefix, "images-idx3-ubyte")
        labels_path = _find(directory, prefix, "labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images of shape {images.shape[1:]} do not match "
                            f"{len(labels)} labels in {labels_path}")
        images = images[..., None] if images.ndim == 3 else images
        splits[split] = ArraySplit(images, labels.astype(np.int64), os.path.basename(images_path))
    num_classes = int(max(s.labels.max() for s in splits.values())) + 1
    classes_file = os.path.join(directory, "classes.txt")
    class_names = read_class_names(classes_file) or [str(i) for i in range(num_classes)]
    if len(class_names) < num_classes:
        raise DataError(f"{classes_file}: {len(class_names)} names for labels up to {num_classes - 1}")
    return Source(os.path.basename(normalised(directory)), class_names, splits)
