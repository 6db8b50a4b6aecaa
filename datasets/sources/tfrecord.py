"""TFRecord shards: the converter (`--mode=convert`) and the `tfrecord:DIR` source.

Each record is a `tf.train.Example` with the common feature keys (see BUILD.md):
    image/encoded        bytes   the image file (JPEG/PNG as found; arrays are written as PNG)
    image/format         bytes   "jpeg" or "png" ...
    image/height, image/width  int64
    image/filename       bytes   the example's original path or id, for error messages
    image/class/label    int64   index into metadata.json's class_names
    image/segmentation/class/encoded  bytes  the class-index PNG mask (sources with masks)
    image/segmentation/class/format   bytes  "png"
    image/object/bbox/xmin|ymin|xmax|ymax  float lists  boxes as fractions of the image width and height
    image/object/class/label  int64 list  index into metadata.json's box_class_names (sources with boxes)
    image/object/class/text   bytes list  the box class names

The converter writes DIR/{split}-{i:05d}-of-{n:05d}.tfrecord plus DIR/metadata.json (class names, per-shard
counts, image sizes, mean record size; box class names and the most boxes in one image), so training on the
shards lists no directories and needs no counting pass.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from datasets.sources.base import (DataError, Parse, Source, Streamed, Targets, epoch_rows, epoch_shuffle,
                                   normalised, shard_warning, shuffle_share)

FORMAT = "tfdata-engine-tfrecord-v1"
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
MASK_FEATURES = {"image/segmentation/class/encoded": tf.io.FixedLenFeature([], tf.string)}
BOX_CORNERS = ("xmin", "ymin", "xmax", "ymax")
BOX_FEATURES = {**{f"image/object/bbox/{corner}": tf.io.VarLenFeature(tf.float32) for corner in BOX_CORNERS},
                "image/object/class/label": tf.io.VarLenFeature(tf.int64)}


@dataclasses.dataclass
class TFRecordSplit(Streamed):
    """One split stored as TFRecord shards with known per-shard counts."""

    files: list[str]
    counts: list[int]
    mean_record_bytes: int
    has_masks: bool = False
    has_boxes: bool = False
    max_boxes_per_image: int = 0

    def __len__(self) -> int:
        return int(sum(self.counts))

    def stream(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
               targets: Targets = Targets(), epoch: tf.Tensor | None = None) -> tuple[tf.data.Dataset, Parse]:
        """One epoch of this pipeline's share, serialized: whole shards per pipeline when there are enough of them (and
        training), else every pipeline reads all shards in a fixed order and keeps every n-th example; with `epoch`
        (`epochs`), shuffled by (seed, epoch)."""
        missing = Targets(masks=targets.masks and not self.has_masks,
                          max_boxes=0 if self.has_boxes else targets.max_boxes)
        missing.require_none(f"TFRecord data {os.path.dirname(self.files[0])}")
        pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
        files = list(self.files)
        if shuffle:
            files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        by_file = pipelines > 1 and shuffle and len(files) >= pipelines
        if by_file:
            files = files[pipeline_id::pipelines]
        elif pipelines > 1 and shuffle:
            shard_warning(len(files), "TFRecord shards", pipelines)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = epoch_shuffle(ds, len(files), seed, context, epoch)
        example_sharded = pipelines > 1 and not by_file  # needs the same record order in every pipeline
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True if example_sharded else None)
        if example_sharded:
            ds = ds.shard(pipelines, pipeline_id)
        if shuffle:
            ds = shuffle_share(ds, len(self), self.mean_record_bytes, context, seed, epoch)
        return ds, lambda record: _parse(record, targets)

    def service_chunks(self, examples_per_chunk: int) -> int:
        """For the tf.data service, a chunk is one shard file."""
        return len(self.files)

    def service_chunk(self, index: tf.Tensor, chunks: int, seed: int, targets: Targets) -> tf.data.Dataset:
        """(record, position) pairs of chunk `index` of the training stream: one shard of epoch
        index // chunks (the epoch's order of shards, `epoch_rows`), its records shuffled as a function of
        (seed, epoch); a record's position is index x 2^32 + its place in the chunk."""
        epoch, share = index // chunks, index % chunks
        files = tf.gather(tf.constant(self.files), epoch_rows(len(self.files), seed, epoch, share, chunks))
        ds = shuffle_share(tf.data.TFRecordDataset(files), max(self.counts), self.mean_record_bytes,
                           tf.distribute.InputContext(), seed, epoch)
        return ds.enumerate().map(lambda place, record: (record, index * 2**32 + place))

    def most_boxes(self) -> int:
        """The most boxes in one image, as the converter counted them (metadata.json)."""
        return self.max_boxes_per_image


def _parse(serialized: tf.Tensor, targets: Targets) -> dict:
    wanted = {**FEATURES, **(MASK_FEATURES if targets.masks else {}), **(BOX_FEATURES if targets.max_boxes else {})}
    features = tf.io.parse_single_example(serialized, wanted)
    record = {"encoded": features["image/encoded"], "label": tf.cast(features["image/class/label"], tf.int32),
              "id": features["image/filename"]}
    if targets.masks:
        record["mask_encoded"] = features["image/segmentation/class/encoded"]
        record["mask_id"] = tf.strings.join([record["id"], " (its mask)"])
    if targets.max_boxes:
        record.update(_padded_boxes(features, targets.max_boxes, record["id"]))
    return record


def _padded_boxes(features: dict, max_boxes: int, filename: tf.Tensor) -> dict:
    """A record's "boxes" (fractions of its image) and "classes", padded to `max_boxes` (class -1, box 0);
    a record with more boxes stops the run naming its file."""
    classes = tf.cast(tf.sparse.to_dense(features["image/object/class/label"]), tf.int32)
    boxes = tf.stack([tf.sparse.to_dense(features[f"image/object/bbox/{corner}"]) for corner in BOX_CORNERS], -1)
    count = tf.shape(classes)[0]
    check = tf.debugging.Assert(count <= max_boxes, ["more boxes than --max_boxes:", count, ">", max_boxes, "in",
                                                     filename])
    with tf.control_dependencies([check]):
        padding = max_boxes - count
    return {"boxes": tf.ensure_shape(tf.pad(boxes, [[0, padding], [0, 0]]), [max_boxes, 4]),
            "classes": tf.ensure_shape(tf.pad(classes, [[0, padding]], constant_values=-1), [max_boxes]),
            "boxes_normalised": tf.constant(True)}


def tfrecord_source(directory: str) -> Source:
    """The converter's output directory."""
    metadata_path = os.path.join(directory, "metadata.json")
    if not tf.io.gfile.exists(metadata_path):
        raise DataError(f"{directory}: no metadata.json; write TFRecord shards with "
                        f"`python launch.py --mode=convert --dataset=... --output={directory}`")
    with tf.io.gfile.GFile(metadata_path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise DataError(f"{metadata_path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    splits = {}
    for name, info in metadata["splits"].items():
        files = [os.path.join(directory, file) for file in info["files"]]
        missing = [file for file in files if not tf.io.gfile.exists(file)]
        if missing:
            raise DataError(f"{directory}: shards listed in metadata.json are missing: {', '.join(missing[:5])}")
        splits[name] = TFRecordSplit(files, info["counts"], info["mean_record_bytes"],
                                     bool(metadata.get("mask_class_names")), bool(metadata.get("box_class_names")),
                                     info.get("max_boxes_per_image", 0))
    return Source(os.path.basename(normalised(directory)), metadata["class_names"], splits,
                  mask_class_names=metadata.get("mask_class_names", []),
                  box_class_names=metadata.get("box_class_names", []), image_labels=metadata.get("image_labels", True))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _box_features(record: dict, class_names: list[str]) -> dict[str, tf.train.Feature]:
    """The record's boxes as fractions of its image (pixel boxes divided by its width and height), with their
    class indices and names, as the TF Object Detection API stores them."""
    real = record["classes"] >= 0
    boxes, classes = record["boxes"][real], record["classes"][real]
    if not record.get("boxes_normalised", False):
        height, width = record["shape"]
        boxes = boxes / np.float32([width, height, width, height])
    features = {f"image/object/bbox/{corner}": tf.train.Feature(float_list=tf.train.FloatList(value=boxes[:, i]))
                for i, corner in enumerate(BOX_CORNERS)}
    features["image/object/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=classes))
    features["image/object/class/text"] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[class_names[c].encode() for c in classes]))
    return features


def _encoded_with_shape(record: dict) -> dict:
    """Encodes array examples as PNG and reads every image's shape, in the graph (parallel map)."""
    if "encoded" in record:
        image = tf.io.decode_image(record["encoded"], expand_animations=False)
        encoded = record["encoded"]
    else:
        image = record["image"]
        encoded = tf.io.encode_png(image)
    out = {"encoded": encoded, "label": record["label"], "id": record["id"], "shape": tf.shape(image)[:2]}
    for key in ("mask_encoded", "boxes", "classes", "boxes_normalised"):
        if key in record:
            out[key] = record[key]
    return out


def _format_of(encoded: bytes) -> bytes:
    if encoded[:3] == b"\xff\xd8\xff":
        return b"jpeg"
    if encoded[:8] == b"\x89PNG\r\n\x1a\n":
        return b"png"
    return b"gif" if encoded[:3] == b"GIF" else b"bmp" if encoded[:2] == b"BM" else b"unknown"


def convert(source: Source, output: str, num_shards: int, seed: int = 0) -> dict:
    """Writes every split of `source` as `num_shards` TFRecord shards (fewer for small splits) and the
    metadata; returns the metadata. Shards are written under temporary names and renamed when complete."""
    if num_shards < 1:
        raise DataError(f"--num_shards={num_shards} must be at least 1")
    tf.io.gfile.makedirs(output)
    masks, boxes = bool(source.mask_class_names), bool(source.box_class_names)
    metadata = {"format": FORMAT, "class_names": source.class_names, "image_labels": source.image_labels,
                "splits": {}, "feature_keys": sorted({**FEATURES, **(MASK_FEATURES if masks else {}),
                                                      **(BOX_FEATURES if boxes else {})}),
                "mask_class_names": source.mask_class_names, "box_class_names": source.box_class_names}
    heights, widths = [], []
    for name, split in source.splits.items():
        shards = min(num_shards, len(split))
        files = [f"{name}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
        writers = [tf.io.TFRecordWriter(os.path.join(output, file + ".tmp")) for file in files]
        counts, total_bytes = [0] * shards, 0
        most = split.most_boxes() if boxes else 0
        targets = Targets(masks=masks, max_boxes=max(1, most) if boxes else 0)
        stream = split.records(tf.distribute.InputContext(), seed, shuffle=True, targets=targets).map(
            _encoded_with_shape, num_parallel_calls=tf.data.AUTOTUNE)
        for index, record in enumerate(stream.as_numpy_iterator()):
            encoded = record["encoded"]
            feature = {
                "image/encoded": _bytes(encoded), "image/format": _bytes(_format_of(encoded)),
                "image/height": _int(int(record["shape"][0])), "image/width": _int(int(record["shape"][1])),
                "image/filename": _bytes(record["id"]), "image/class/label": _int(int(record["label"])),
            }
            if masks:
                feature["image/segmentation/class/encoded"] = _bytes(record["mask_encoded"])
                feature["image/segmentation/class/format"] = _bytes(b"png")
            if boxes:
                feature.update(_box_features(record, source.box_class_names))
            example = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            writers[index % shards].write(example)
            counts[index % shards] += 1
            total_bytes += len(example)
            heights.append(int(record["shape"][0]))
            widths.append(int(record["shape"][1]))
        for writer, file in zip(writers, files):
            writer.close()
            tf.io.gfile.rename(os.path.join(output, file + ".tmp"), os.path.join(output, file), overwrite=True)
        metadata["splits"][name] = {"files": files, "counts": counts, "num_examples": sum(counts),
                                    "mean_record_bytes": total_bytes // max(1, sum(counts)),
                                    "max_boxes_per_image": most}
    metadata["max_boxes_per_image"] = max(split["max_boxes_per_image"] for split in metadata["splits"].values())
    metadata["image_sizes"] = {
        "height": {"min": min(heights), "median": float(np.median(heights)), "max": max(heights)},
        "width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
    }
    with tf.io.gfile.GFile(os.path.join(output, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata
