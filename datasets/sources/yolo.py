"""`yolo:DATA.yaml` or `yolo:DIR`: Ultralytics YOLO txt labels.

    yolo:DATA.yaml  `path` (the root, relative to the YAML's folder; default that folder), `train` and `val`
                    (image folders relative to the root, .txt files listing images, or lists of them),
                    `names` (a list, or {id: name}), optional `nc`
    yolo:DIR        DIR/data.yaml if there is one, else DIR/images/{train,val} (or DIR/{train,valid}/images)
                    with the labels beside them; class names are then the ids found, "0".."K"

An image's label file is its path with the last "/images/" replaced by "/labels/" and the extension by
".txt", one `class cx cy w h` line per box in fractions of the image (the boxes stay fractions: decoding
scales them); an image without one has no objects. Bad labels: `box_labels.py`.
"""

from __future__ import annotations

import os

import tensorflow as tf
import yaml

from datasets.sources.base import (IMAGE_EXTENSIONS, SPLIT_DIRECTORY_NAMES, DataError, Source, absolute, list_images,
                                   normalised)
from datasets.sources.box_labels import YOLO_SLACK, BadLabels, Box, box_arrays, detection_examples


def yolo_label_path(image: str) -> str:
    """The label file of `image` (Ultralytics): the last "/images/" becomes "/labels/", the extension ".txt"."""
    head, found, tail = image.rpartition(f"{os.sep}images{os.sep}")
    return os.path.splitext(f"{head}{os.sep}labels{os.sep}{tail}" if found else image)[0] + ".txt"


def _listed_images(listing: str) -> list[str]:
    """The images a .txt file lists, one a line, relative paths from the file's folder."""
    with tf.io.gfile.GFile(listing) as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    images = [normalised(os.path.join(os.path.dirname(listing), line)) for _, line in lines]
    for (number, _), image in zip(lines, images):
        if not tf.io.gfile.exists(image):
            raise DataError(f"{listing}:{number}: image {image} does not exist")
    return images


def _yaml_entries(data: dict, yaml_path: str) -> dict[str, list[str]]:
    """{"train", "val"}: the image folders and .txt lists of a data YAML, as paths. Roboflow's "../train/images"
    falls back to "train/images" under the root when the former is not there, as Ultralytics does."""
    root = normalised(os.path.join(os.path.dirname(absolute(yaml_path)), str(data.get("path") or "")))
    entries = {}
    for split in ("train", "val"):
        if not data.get(split):
            raise DataError(f"{yaml_path}: no `{split}:` images (a folder, a .txt list, or a list of them)")
        entries[split] = []
        for entry in data[split] if isinstance(data[split], list) else [data[split]]:
            path = normalised(os.path.join(root, str(entry)))
            if not tf.io.gfile.exists(path) and str(entry).startswith("../"):
                path = normalised(os.path.join(root, str(entry)[3:]))
            if not tf.io.gfile.exists(path):
                raise DataError(f"{yaml_path}: {split} images {entry!r} not found (looked for {path})")
            entries[split].append(path)
    return entries


def _yaml_names(data: dict, yaml_path: str) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{yaml_path}: `names` ids {sorted(names)} are not 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{yaml_path}: `names` must list the class names (a list, or {{id: name}})")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{yaml_path}: nc: {data['nc']} but {len(names)} names")
    return [str(name) for name in names]


def _read_data_yaml(yaml_path: str) -> tuple[dict[str, list[str]], list[str]]:
    """The image folders and lists of each split, and the class names, of an Ultralytics data YAML."""
    try:
        with tf.io.gfile.GFile(yaml_path) as f:
            data = yaml.safe_load(f)
    except (tf.errors.OpError, yaml.YAMLError) as error:
        raise DataError(f"{yaml_path}: not a readable data YAML ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: not a data YAML (expected keys path, train, val, names)")
    return _yaml_entries(data, yaml_path), _yaml_names(data, yaml_path)


def _split_images(entries: dict[str, list[str]]) -> dict[str, list[str]]:
    """The images in each split's folders and .txt lists; a split without any stops the run."""
    images = {}
    for split, split_entries in entries.items():
        images[split] = [image for entry in split_entries
                         for image in (list_images(entry) if tf.io.gfile.isdir(entry) else _listed_images(entry))]
        if not images[split]:
            raise DataError(f"{', '.join(split_entries)}: no {split} images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def _yolo_folders(directory: str) -> dict[str, list[str]]:
    """{"train", "val"}: DIR/images/NAME or DIR/NAME/images, NAME a train or validation folder name."""
    entries = {}
    for split, names in SPLIT_DIRECTORY_NAMES.items():
        candidates = [os.path.join(directory, *parts) for name in names
                      for parts in (("images", name), (name, "images"))]
        found = [path for path in candidates if tf.io.gfile.isdir(path)]
        if not found:
            raise DataError(f"{directory}: no data.yaml and no {split} images (looked for "
                            f"{', '.join(os.path.relpath(c, directory) for c in candidates)})")
        entries[split] = found[:1]
    return entries


def _read_yolo_labels(label: str, bad: BadLabels) -> list[Box]:
    """The boxes of a YOLO label file, corners in fractions of the image; bad lines go to `bad`."""
    boxes = []
    with tf.io.gfile.GFile(label) as f:
        for number, line in enumerate(f, 1):
            where, fields = f"{label}:{number}", line.split()
            if not fields:
                continue
            try:
                values = [float(field) for field in fields]
            except ValueError:
                values = []
            if len(values) != 5:
                bad.drop_box(where, f"expected 5 numbers `class cx cy w h`, found {line.strip()!r}")
                continue
            class_id, cx, cy, w, h = values
            corners = bad.checked(where, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1.0, 1.0, YOLO_SLACK)
            if corners is not None:
                boxes.append(Box(where, int(class_id) if class_id.is_integer() else fields[0], corners))
    return boxes


def _label_files_in(folder: str) -> list[str]:
    return [os.path.join(dirpath, f) for dirpath, _, filenames in tf.io.gfile.walk(folder)
            for f in filenames if f.endswith(".txt")]


def _labels_without_images(folders: list[str], labels: set[str]) -> list[str]:
    """The .txt files in the label folders of image `folders` that belong to none of the `labels` expected."""
    found = []
    for folder in folders:
        twin = os.path.dirname(yolo_label_path(os.path.join(folder, "x")))
        if twin != folder and tf.io.gfile.isdir(twin):
            found += [path for path in _label_files_in(twin) if path not in labels]
    return sorted(set(found))


def yolo_source(path: str, skip_bad_labels: bool = False) -> Source:
    """YOLO txt labels, from a data YAML or a folder (see the module docstring); boxes stay fractions of the
    image (`boxes_normalised`)."""
    if tf.io.gfile.exists(os.path.join(path, "data.yaml")):
        path = os.path.join(path, "data.yaml")
    if tf.io.gfile.isdir(path):
        entries, names = _yolo_folders(path), None
    elif tf.io.gfile.exists(path):
        entries, names = _read_data_yaml(path)
    else:
        raise DataError(f"{path}: no such data YAML or folder (--dataset=yolo:DATA.yaml or yolo:DIR)")
    bad = BadLabels(skip_bad_labels)
    images = _split_images(entries)
    labels = {image: yolo_label_path(image) for split_images in images.values() for image in split_images}
    folders = [entry for split_entries in entries.values() for entry in split_entries if tf.io.gfile.isdir(entry)]
    for orphan in _labels_without_images(folders, set(labels.values())):
        bad.drop_label_file(orphan, "a label file without an image")
    boxes = {}
    for image, label in labels.items():
        if tf.io.gfile.exists(label):
            boxes[image] = _read_yolo_labels(label, bad)
        else:
            bad.notes["images_without_labels"].append(image)
            boxes[image] = []
    if names is None:
        ids = [box.name for found in boxes.values() for box in found if isinstance(box.name, int) and box.name >= 0]
        if not ids:
            raise DataError(f"{path}: no boxes in any label file")
        names = [str(i) for i in range(max(ids) + 1)]
    index = {i: i for i in range(len(names))}
    arrays = {image: box_arrays(found, index, bad) for image, found in boxes.items()}
    splits = {split: detection_examples(split_images, [arrays[image] for image in split_images], normalised=True)
              for split, split_images in images.items()}
    bad.warn(f"yolo:{path}")
    return Source(f"yolo:{path}", names, splits, bad.notes, box_class_names=names, image_labels=False)
