"""`voc:DIR`: Pascal VOC XML boxes.

    DIR/JPEGImages/, DIR/Annotations/*.xml, DIR/ImageSets/Main/{train,val,test}.txt

Boxes (xmin ymin xmax ymax) are pixels as written; difficult objects are kept. Bad labels: `box_labels.py`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import tensorflow as tf

from datasets.sources.base import IMAGE_EXTENSIONS, DataError, Source, list_images, seeded_split
from datasets.sources.box_labels import PIXEL_SLACK, BadLabels, Box, box_arrays, detection_examples


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _voc_image(root: ElementTree.Element, xml: str, images_dir: str) -> str | None:
    """The image of an annotation: its <filename> in JPEGImages, else the XML's stem with an image extension."""
    stem = os.path.splitext(os.path.basename(xml))[0]
    candidates = [(root.findtext("filename") or "").strip(), *(stem + extension for extension in IMAGE_EXTENSIONS)]
    found = [os.path.join(images_dir, c) for c in candidates if c and tf.io.gfile.exists(os.path.join(images_dir, c))]
    return found[0] if found else None


def _read_voc_xml(xml: str, images_dir: str, bad: BadLabels) -> tuple[str | None, list[Box]]:
    """The image and boxes of one VOC annotation; its bad objects, or its missing image (then None and no
    boxes), go to `bad`."""
    try:
        with tf.io.gfile.GFile(xml, "rb") as f:
            root = ElementTree.parse(f).getroot()
    except ElementTree.ParseError as error:
        raise DataError(f"{xml}: not a VOC annotation ({error})") from None
    image = _voc_image(root, xml, images_dir)
    if image is None:
        bad.drop_label_file(xml, f"its image {root.findtext('filename')!r} is not in {images_dir}")
        return None, []
    width, height = _number(root.findtext("size/width")), _number(root.findtext("size/height"))
    boxes = []
    for number, element in enumerate(root.iter("object"), 1):
        where = f"{xml} object {number}"
        if not (width > 0 and height > 0):
            raise DataError(f"{xml}: no <size> with positive <width> and <height> to check its boxes against")
        name = (element.findtext("name") or "").strip()
        corners = [_number(element.findtext(f"bndbox/{key}")) for key in ("xmin", "ymin", "xmax", "ymax")]
        if not name or np.isnan(corners).any():
            bad.drop_box(where, "needs a <name> and a <bndbox> of <xmin> <ymin> <xmax> <ymax> numbers")
            continue
        clipped = bad.checked(where, corners, width, height, PIXEL_SLACK)
        if clipped is not None:
            boxes.append(Box(where, name, clipped))
    return image, boxes


def _voc_split_ids(directory: str) -> dict[str, list[str]] | None:
    """The image ids of ImageSets/Main/{train,val,test}.txt, test.txt serving as val when there is no val.txt;
    None without train.txt and another of them."""
    main = os.path.join(directory, "ImageSets", "Main")
    files = {split: os.path.join(main, f"{split}.txt") for split in ("train", "val", "test")}
    files = {split: path for split, path in files.items() if tf.io.gfile.exists(path)}
    if "train" not in files or len(files) == 1:
        return None
    if "val" not in files:
        files["val"] = files.pop("test")
    ids = {}
    for split, listing in files.items():
        with tf.io.gfile.GFile(listing) as f:
            ids[split] = [line.split()[0] for line in f if line.strip()]
    return ids


def voc_source(directory: str, skip_bad_labels: bool = False, class_names: list[str] | None = None,
               val_fraction: float = 0.2, seed: int = 0) -> Source:
    """Pascal VOC: boxes in pixels from DIR/Annotations/*.xml (difficult objects kept), images in
    DIR/JPEGImages, splits from DIR/ImageSets/Main or else `val_fraction` held out (seeded); classes are
    `class_names`, else every name in the XML files, sorted. An image without an XML has no objects."""
    annotations_dir, images_dir = os.path.join(directory, "Annotations"), os.path.join(directory, "JPEGImages")
    for folder in (annotations_dir, images_dir):
        if not tf.io.gfile.isdir(folder):
            raise DataError(f"{directory}: no {os.path.basename(folder)}/ folder (--dataset=voc:DIR needs "
                            "DIR/JPEGImages and DIR/Annotations)")
    bad = BadLabels(skip_bad_labels)
    parsed, without_images = {}, set()  # image id (the XML's stem) -> (image, boxes); ids dropped
    for name in sorted(f for f in tf.io.gfile.listdir(annotations_dir) if f.lower().endswith(".xml")):
        image, boxes = _read_voc_xml(os.path.join(annotations_dir, name), images_dir, bad)
        if image is None:
            without_images.add(os.path.splitext(name)[0])
        else:
            parsed[os.path.splitext(name)[0]] = (image, boxes)
    labelled = {image for image, _ in parsed.values()}
    for image in list_images(images_dir):
        key = os.path.splitext(os.path.basename(image))[0]
        if image not in labelled and key not in parsed:
            parsed[key] = (image, [])
            bad.notes["images_without_labels"].append(image)
    names = list(class_names or sorted({box.name for _, boxes in parsed.values() for box in boxes}))
    index = {name: i for i, name in enumerate(names)}
    arrays = {key: box_arrays(boxes, index, bad) for key, (_, boxes) in sorted(parsed.items())}
    source = f"voc:{directory}"
    examples = lambda keys: detection_examples([parsed[k][0] for k in keys], [arrays[k] for k in keys],  # noqa: E731
                                                normalised=False)
    split_ids = _voc_split_ids(directory)
    if split_ids is None:
        splits = seeded_split(examples(sorted(parsed)), val_fraction, seed, source)
    else:
        unknown = sorted({key for keys in split_ids.values() for key in keys} - parsed.keys() - without_images)
        if unknown:
            raise DataError(f"{os.path.join(directory, 'ImageSets', 'Main')}: ids with neither an annotation nor "
                            f"an image: {', '.join(unknown[:10])}")
        splits = {split: examples([key for key in keys if key in parsed]) for split, keys in split_ids.items()}
    bad.warn(source)
    return Source(source, names, splits, bad.notes, box_class_names=names, image_labels=False)
