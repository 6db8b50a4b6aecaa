"""`shapes[:DIR]`, the embedded default dataset: coloured shapes on textured, noisy backgrounds.

Generated deterministically from a seed and written once, atomically, as real files:

    DIR/metadata.json                 parameters, class names, counts
    DIR/classes.txt                   one class name per line
    DIR/{train,val}/images/*.jpg      RGB JPEG images
    DIR/{train,val}/masks/*.png       class-index PNG masks (0 = background, k + 1 = class k)
    DIR/{train,val}/annotations.json  per image: label, boxes [x0, y0, x1, y1] in pixels, box classes

Every image holds one large "primary" object, whose class is the image's classification label, and
up to two smaller objects of any class. The same files serve classification, segmentation and detection.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from datasets.sources import shapes_draw
from datasets.sources.base import Examples, Source
from datasets.sources.shapes_draw import CLASS_NAMES, SPLITS

FORMAT_VERSION = 1
DEFAULT_NUM_TRAIN = 8000  # fewer lets a small CNN memorise instead of learning shapes (measured)
DEFAULT_NUM_VAL = 1000
DEFAULT_IMAGE_SIZE = 128


def _write_split(root: str, split: str, count: int, size: int, seed: int) -> None:
    """Draws in worker processes (NumPy), encodes and writes here (TensorFlow releases the GIL)."""
    os.makedirs(os.path.join(root, split, "images"))
    os.makedirs(os.path.join(root, split, "masks"))

    def write(index: int, drawn: tuple) -> dict:
        image, mask, annotation = drawn
        stem = f"{split}_{index:06d}"
        image_file, mask_file = f"images/{stem}.jpg", f"masks/{stem}.png"
        tf.io.write_file(os.path.join(root, split, image_file), tf.io.encode_jpeg(image, quality=90))
        tf.io.write_file(os.path.join(root, split, mask_file), tf.io.encode_png(mask[..., None]))
        return {"image": image_file, "mask": mask_file, **annotation}

    workers = os.cpu_count() or 1
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as drawers, \
            concurrent.futures.ThreadPoolExecutor(workers) as writers:
        drawn = drawers.map(shapes_draw.draw, itertools.repeat(seed), itertools.repeat(split), range(count),
                            itertools.repeat(size), chunksize=64)
        records = list(writers.map(write, range(count), drawn))
    with open(os.path.join(root, split, "annotations.json"), "w") as f:
        json.dump({"classes": list(CLASS_NAMES), "examples": records}, f)


def generate(
    directory: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> str:
    """Writes the dataset to `directory` unless it is already there; returns `directory`.

    Generation happens in a temporary sibling directory renamed into place, so a crash never leaves a
    half-written dataset and concurrent writers (several workers) agree on one copy.
    """
    if os.path.exists(os.path.join(directory, "metadata.json")):
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    print(f"[data] generating the shapes dataset ({num_train} train / {num_val} val) into {directory}, once",
          flush=True)
    tmp = tempfile.mkdtemp(prefix=".shapes-tmp-", dir=parent)
    try:
        for split, count in zip(SPLITS, (num_train, num_val)):
            _write_split(tmp, split, count, image_size, seed)
        with open(os.path.join(tmp, "classes.txt"), "w") as f:
            f.write("\n".join(CLASS_NAMES) + "\n")
        metadata = {
            "format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size,
            "classes": list(CLASS_NAMES), "counts": {"train": num_train, "val": num_val},
        }
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not os.path.exists(os.path.join(directory, "metadata.json")):
                raise
            logging.info("Another process generated %s first; using its copy.", directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def default_directory(cache_dir: str, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
                      image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0) -> str:
    """The cache path that identifies one set of generation parameters."""
    name = f"shapes-v{FORMAT_VERSION}-{image_size}px-{num_train}-{num_val}-seed{seed}"
    return os.path.join(cache_dir, name)


def _read_split(root: str, split: str) -> Examples:
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
    generate(directory)
    with open(os.path.join(directory, "metadata.json")) as f:
        metadata = json.load(f)
    splits = {split: _read_split(directory, split) for split in SPLITS}
    return Source("shapes", list(metadata["classes"]), splits, mask_class_names=["background", *metadata["classes"]],
                  box_class_names=list(metadata["classes"]))
