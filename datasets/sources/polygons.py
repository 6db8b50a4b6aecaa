"""Polygon annotations to class-index masks: `labelme:DIR` (labelme JSON) and `coco:ANNOTATIONS.json` (which
also carries the boxes of its annotations).

Masks are rasterised once, when the source is first read, into PNG files in a cache folder keyed by the
annotation file's path, size and modification time; the pipeline then reads them like any mask folder.
Pixels of no polygon are background (class 0); later polygons paint over earlier ones.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from datasets.sources.base import (DataError, Examples, Source, absolute, normalised, read_class_names,
                                   seeded_split)
from datasets.sources.box_labels import PIXEL_SLACK, BadLabels, Box, box_arrays


def rasterise(polygons: list[tuple[int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """A uint8 [height, width] mask: each (class, [n, 2] x/y points) polygon fills the pixels whose centres
    it contains (even-odd rule), in order."""
    mask = np.zeros((height, width), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for class_id, points in polygons:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if len(points) < 3:
            continue
        inside = np.zeros((height, width), bool)
        for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0)):
            if y0 == y1:
                continue
            crosses = (ys >= min(y0, y1)) & (ys < max(y0, y1))
            x_at_y = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
            inside ^= crosses & (xs < x_at_y)
        mask[inside] = class_id
    return mask


def _cache_folder(annotations: str, cache_dir: str) -> str:
    stat = tf.io.gfile.stat(annotations)
    key = hashlib.sha1(f"{absolute(annotations)}|{stat.length}|{stat.mtime_nsec}".encode()).hexdigest()
    return os.path.join(cache_dir, "masks", key[:16])


def _write_masks(folder: str, masks: dict[str, callable]) -> dict[str, str]:
    """Writes each not yet written mask (name -> function making it) as folder/name.png; returns the paths."""
    tf.io.gfile.makedirs(folder)
    paths = {}
    for name, make in masks.items():
        path = os.path.join(folder, f"{name}.png")
        if not tf.io.gfile.exists(path):
            tf.io.write_file(path + ".tmp", tf.io.encode_png(make()[..., None]))
            tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
        paths[name] = path
    return paths


def labelme_source(directory: str, cache_dir: str, class_names: list[str] | None = None,
                   val_fraction: float = 0.2, seed: int = 0) -> Source:
    """labelme JSON files in `directory` (polygons and rectangles; `imagePath` relative to the JSON). Class 0
    is background; the others are `class_names` (a flag or `directory`/classes.txt) or, without either,
    the labels found, sorted. A label outside `class_names` stops the run naming the file."""
    files = sorted(f for f in tf.io.gfile.listdir(directory) if f.lower().endswith(".json"))
    if not files:
        raise DataError(f"{directory}: no labelme .json files")
    documents = {}
    for file in files:
        with tf.io.gfile.GFile(os.path.join(directory, file)) as f:
            documents[file] = json.load(f)
    class_names = class_names or read_class_names(os.path.join(directory, "classes.txt"))
    labels = sorted({shape["label"] for doc in documents.values() for shape in doc.get("shapes", [])})
    names = ["background", *(class_names or labels)]
    index = {name: i for i, name in enumerate(names)}
    images, makers = [], {}
    for file, doc in documents.items():
        unknown = sorted({shape["label"] for shape in doc.get("shapes", [])} - index.keys())
        if unknown:
            raise DataError(f"{os.path.join(directory, file)}: labels {unknown} are not among {names[1:]}")
        image = normalised(os.path.join(directory, doc["imagePath"]))
        if not tf.io.gfile.exists(image):
            raise DataError(f"{os.path.join(directory, file)}: its image {image} does not exist")
        polygons = []
        for shape in doc.get("shapes", []):
            points = np.asarray(shape["points"], np.float64)
            if shape.get("shape_type", "polygon") == "rectangle":
                (x0, y0), (x1, y1) = points[:2]
                points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            polygons.append((index[shape["label"]], points))
        images.append(image)
        makers[os.path.splitext(file)[0]] = (lambda p=polygons, d=doc: rasterise(p, d["imageHeight"], d["imageWidth"]))
    folder = _cache_folder(os.path.join(directory, files[0]), cache_dir) + f"-{len(files)}"
    masks = _write_masks(folder, makers)
    source = f"labelme:{directory}"
    examples = Examples(images, [0] * len(images), [masks[os.path.splitext(f)[0]] for f in files])
    return Source(source, names[1:], seeded_split(examples, val_fraction, seed, source), mask_class_names=names)


def _coco_boxes(coco, info: dict, index: dict[int, int], annotations: str, bad: BadLabels
                ) -> tuple[np.ndarray, np.ndarray]:
    """The x0, y0, x1, y1 pixel boxes and classes (`index`: category id -> class) of one image's non-crowd
    annotations; bad ones go to `bad`."""
    boxes = []
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=None)):
        if annotation.get("iscrowd", 0):
            continue
        where = f"{annotations} annotation {annotation.get('id')} (image {info['file_name']})"
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            bad.drop_box(where, f"bbox {bbox!r} is not [x, y, width, height]")
            continue
        x, y, w, h = bbox
        corners = bad.checked(where, [x, y, x + w, y + h], info["width"], info["height"], PIXEL_SLACK)
        if corners is not None:
            boxes.append(Box(where, annotation["category_id"], corners))
    return box_arrays(boxes, index, bad)


def coco_source(annotations: str, cache_dir: str, image_dir: str = "", val_fraction: float = 0.2,
                seed: int = 0, skip_bad_labels: bool = False) -> Source:
    """A COCO instances file: polygons and RLE of every annotation painted as its category (pycocotools),
    class 0 background, categories in id order; and the boxes (`bbox`) of its non-crowd annotations, box class
    i the i-th category. Images come from `image_dir` (default: beside the JSON). Bad boxes and missing images
    stop the run, or with `skip_bad_labels` are dropped and listed (`datasets/sources/box_labels.py`)."""
    from pycocotools.coco import COCO

    coco = COCO()  # COCO(path) opens local files only
    with tf.io.gfile.GFile(annotations) as f:
        coco.dataset = json.load(f)
    coco.createIndex()
    categories = sorted(coco.getCatIds())
    names = ["background", *(coco.loadCats(i)[0]["name"] for i in categories)]
    index = {category: i + 1 for i, category in enumerate(categories)}  # mask values: 0 is background
    box_index = {category: i for i, category in enumerate(categories)}
    image_dir = image_dir or os.path.dirname(annotations)
    bad = BadLabels(skip_bad_labels)
    images, makers, boxes = [], {}, []
    for info in coco.loadImgs(sorted(coco.getImgIds())):
        path = os.path.join(image_dir, info["file_name"])
        if not tf.io.gfile.exists(path):
            bad.drop_label_file(f"{annotations} image id {info['id']}", f"its image {path} does not exist")
            continue

        def make(info=info) -> np.ndarray:
            mask = np.zeros((info["height"], info["width"]), np.uint8)
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=None)):
                if annotation["category_id"] in index:
                    mask[coco.annToMask(annotation) > 0] = index[annotation["category_id"]]
            return mask

        images.append(path)
        makers[str(info["id"])] = make
        boxes.append(_coco_boxes(coco, info, box_index, annotations, bad))
        if not coco.getAnnIds(imgIds=info["id"], iscrowd=None):
            bad.notes["images_without_labels"].append(path)
    masks = _write_masks(_cache_folder(annotations, cache_dir), makers)
    examples = Examples(images, [0] * len(images), list(masks.values()), boxes=[b for b, _ in boxes],
                        box_classes=[c for _, c in boxes])
    source = f"coco:{annotations}"
    bad.warn(source)
    return Source(source, names[1:], seeded_split(examples, val_fraction, seed, source), bad.notes,
                  mask_class_names=names, box_class_names=names[1:])
