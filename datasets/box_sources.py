"""Object-detection labels: `yolo:DATA.yaml` or `yolo:DIR` (Ultralytics YOLO txt) and `voc:DIR` (Pascal VOC).

    yolo:DATA.yaml  `path` (the root, relative to the YAML's folder; default that folder), `train` and `val`
                    (image folders relative to the root, .txt files listing images, or lists of them),
                    `names` (a list, or {id: name}), optional `nc`
    yolo:DIR        DIR/data.yaml if there is one, else DIR/images/{train,val} (or DIR/{train,valid}/images)
                    with the labels beside them; class names are then the ids found, "0".."K"
    voc:DIR         DIR/JPEGImages/, DIR/Annotations/*.xml, DIR/ImageSets/Main/{train,val,test}.txt

An image's YOLO label file is its path with the last "/images/" replaced by "/labels/" and the extension by
".txt", one `class cx cy w h` line per box in fractions of the image (the boxes stay fractions: decoding
scales them); an image without one has no objects. VOC boxes (xmin ymin xmax ymax) are pixels as written.
Bad labels stop the run naming the file: a box with no area, a box outside its image by more than 1% of it
(YOLO) or 1 pixel (VOC, COCO), an unknown class, a malformed line, a label file without its image. With
`skip_bad_labels` the bad box alone is dropped (its image stays) and listed in `Source.notes`, with one
warning counting them. Boxes only slightly outside their image are clipped to it.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
from typing import NamedTuple, Sequence

import numpy as np
import yaml

from datasets.sources import IMAGE_EXTENSIONS, SPLIT_DIRECTORY_NAMES, DataError, Examples, Source, Split

YOLO_SLACK = 0.01  # fraction of the image a YOLO box may overhang it (clipped); more is an error
PIXEL_SLACK = 1.0  # pixels a VOC or COCO box may overhang its image (clipped); more is an error


class Box(NamedTuple):
    """One labelled box before its class is looked up."""

    where: str  # its file, and line or object, for messages
    name: str | int  # its class: a YOLO id or a VOC/COCO name or category id
    corners: np.ndarray  # float32 x0, y0, x1, y1, inside the image


class BadLabels:
    """The bad labels of one source: the first stops the run, or with `skip` each is dropped and listed in
    `notes` ("dropped_boxes", "labels_without_images"; "images_without_labels" lists images with no objects)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.notes: dict[str, list[str]] = {"dropped_boxes": [], "labels_without_images": [],
                                            "images_without_labels": []}

    def drop_box(self, where: str, reason: str) -> None:
        """A bad box or label line at `where`: raises DataError, or when skipping notes it as dropped."""
        if not self.skip:
            raise DataError(f"{where}: {reason} (pass --skip_bad_labels to drop them)")
        self.notes["dropped_boxes"].append(f"{where}: {reason}")

    def drop_label_file(self, where: str, reason: str) -> None:
        """Labels whose image is missing: raises DataError, or when skipping notes `where` and goes on."""
        if not self.skip:
            raise DataError(f"{where}: {reason} (pass --skip_bad_labels to drop them)")
        self.notes["labels_without_images"].append(where)

    def checked(self, where: str, corners: Sequence[float], width: float, height: float, slack: float
                ) -> np.ndarray | None:
        """`corners` (x0, y0, x1, y1) clipped to a width x height image, or None (after `drop_box`) when they
        overhang it by more than `slack` or enclose no area."""
        x0, y0, x1, y1 = corners
        shown = "[" + ", ".join(f"{value:g}" for value in corners) + "]"
        if min(x0, y0) < -slack or x1 > width + slack or y1 > height + slack:
            self.drop_box(where, f"box x0 y0 x1 y1 = {shown} is outside the {width:g}x{height:g} image")
            return None
        clipped = np.clip(np.asarray(corners, np.float32), 0.0, np.float32([width, height, width, height]))
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            self.drop_box(where, f"box x0 y0 x1 y1 = {shown} has no area")
            return None
        return clipped

    def warn(self, source: str) -> None:
        """Logs one line counting what was dropped, if anything was."""
        boxes, files = len(self.notes["dropped_boxes"]), len(self.notes["labels_without_images"])
        if boxes or files:
            logging.warning("%s: --skip_bad_labels dropped %d bad boxes and %d label files without images "
                            "(--mode=inspect lists them)", source, boxes, files)


def box_arrays(boxes: list[Box], index: dict, bad: BadLabels) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float32 [n, 4] and their classes int32 [n] (`index`: class name -> class); boxes of unknown
    classes go to `bad`."""
    kept, classes = [], []
    for box in boxes:
        if box.name not in index:
            bad.drop_box(box.where, f"unknown class {box.name!r}")
            continue
        kept.append(box.corners)
        classes.append(index[box.name])
    return np.asarray(kept, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


def subset(examples: Examples, indices: Sequence[int]) -> Examples:
    """The examples at `indices`, every per-image list kept aligned."""
    pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
    return Examples(pick(examples.paths), pick(examples.labels), pick(examples.mask_paths), pick(examples.boxes),
                    pick(examples.box_classes), examples.boxes_normalised)


def seeded_split(examples: Examples, val_fraction: float, seed: int, source: str) -> dict[str, Examples]:
    """{"train", "val"}: `val_fraction` of the examples (at least one, never all), chosen by `seed`, held out."""
    if len(examples) < 2:
        raise DataError(f"{source}: {len(examples)} annotated images; need at least 2 (train and val)")
    order = np.random.default_rng(seed).permutation(len(examples))
    num_val = min(max(1, round(len(examples) * val_fraction)), len(examples) - 1)
    return {"train": subset(examples, sorted(order[num_val:])), "val": subset(examples, sorted(order[:num_val]))}


def most_boxes(split: Split) -> int:
    """The most boxes in one image of `split` (loose files: counted; TFRecord shards: from their metadata;
    0 for splits without boxes)."""
    if isinstance(split, Examples):
        return max((len(classes) for classes in split.box_classes or []), default=0)
    return getattr(split, "max_boxes_per_image", 0)


def _detection_examples(images: list[str], boxes: list[tuple[np.ndarray, np.ndarray]], normalised: bool
                        ) -> Examples:
    return Examples(images, [-1] * len(images), boxes=[b for b, _ in boxes], box_classes=[c for _, c in boxes],
                    boxes_normalised=normalised)


# YOLO ------------------------------------------------------------------------------------------------------


def yolo_label_path(image: str) -> str:
    """The label file of `image` (Ultralytics): the last "/images/" becomes "/labels/", the extension ".txt"."""
    head, found, tail = image.rpartition(f"{os.sep}images{os.sep}")
    return os.path.splitext(f"{head}{os.sep}labels{os.sep}{tail}" if found else image)[0] + ".txt"


def _images_in(folder: str) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _listed_images(listing: str) -> list[str]:
    """The images a .txt file lists, one a line, relative paths from the file's folder."""
    with open(listing) as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    images = [os.path.normpath(os.path.join(os.path.dirname(listing), line)) for _, line in lines]
    for (number, _), image in zip(lines, images):
        if not os.path.exists(image):
            raise DataError(f"{listing}:{number}: image {image} does not exist")
    return images


def _yaml_entries(data: dict, yaml_path: str) -> dict[str, list[str]]:
    """{"train", "val"}: the image folders and .txt lists of a data YAML, as paths. Roboflow's "../train/images"
    falls back to "train/images" under the root when the former is not there, as Ultralytics does."""
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(yaml_path)), str(data.get("path") or "")))
    entries = {}
    for split in ("train", "val"):
        if not data.get(split):
            raise DataError(f"{yaml_path}: no `{split}:` images (a folder, a .txt list, or a list of them)")
        entries[split] = []
        for entry in data[split] if isinstance(data[split], list) else [data[split]]:
            path = os.path.normpath(os.path.join(root, str(entry)))
            if not os.path.exists(path) and str(entry).startswith("../"):
                path = os.path.normpath(os.path.join(root, str(entry)[3:]))
            if not os.path.exists(path):
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
        with open(yaml_path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{yaml_path}: not a readable data YAML ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: not a data YAML (expected keys path, train, val, names)")
    return _yaml_entries(data, yaml_path), _yaml_names(data, yaml_path)


def _split_images(entries: dict[str, list[str]]) -> dict[str, list[str]]:
    """The images in each split's folders and .txt lists; a split without any stops the run."""
    images = {}
    for split, split_entries in entries.items():
        images[split] = [image for entry in split_entries
                         for image in (_images_in(entry) if os.path.isdir(entry) else _listed_images(entry))]
        if not images[split]:
            raise DataError(f"{', '.join(split_entries)}: no {split} images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def _yolo_folders(directory: str) -> dict[str, list[str]]:
    """{"train", "val"}: DIR/images/NAME or DIR/NAME/images, NAME a train or validation folder name."""
    entries = {}
    for split, names in SPLIT_DIRECTORY_NAMES.items():
        candidates = [os.path.join(directory, *parts) for name in names
                      for parts in (("images", name), (name, "images"))]
        found = [path for path in candidates if os.path.isdir(path)]
        if not found:
            raise DataError(f"{directory}: no data.yaml and no {split} images (looked for "
                            f"{', '.join(os.path.relpath(c, directory) for c in candidates)})")
        entries[split] = found[:1]
    return entries


def _read_yolo_labels(label: str, bad: BadLabels) -> list[Box]:
    """The boxes of a YOLO label file, corners in fractions of the image; bad lines go to `bad`."""
    boxes = []
    with open(label) as f:
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
    return [os.path.join(dirpath, f) for dirpath, _, filenames in os.walk(folder, followlinks=True)
            for f in filenames if f.endswith(".txt")]


def _labels_without_images(folders: list[str], labels: set[str]) -> list[str]:
    """The .txt files in the label folders of image `folders` that belong to none of the `labels` expected."""
    found = []
    for folder in folders:
        twin = os.path.dirname(yolo_label_path(os.path.join(folder, "x")))
        if twin != folder and os.path.isdir(twin):
            found += [path for path in _label_files_in(twin) if path not in labels]
    return sorted(set(found))


def yolo_source(path: str, skip_bad_labels: bool = False) -> Source:
    """YOLO txt labels, from a data YAML or a folder (see the module docstring); boxes stay fractions of the
    image (`boxes_normalised`)."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "data.yaml")):
        path = os.path.join(path, "data.yaml")
    if os.path.isdir(path):
        entries, names = _yolo_folders(path), None
    elif os.path.isfile(path):
        entries, names = _read_data_yaml(path)
    else:
        raise DataError(f"{path}: no such data YAML or folder (--dataset=yolo:DATA.yaml or yolo:DIR)")
    bad = BadLabels(skip_bad_labels)
    images = _split_images(entries)
    labels = {image: yolo_label_path(image) for split_images in images.values() for image in split_images}
    folders = [entry for split_entries in entries.values() for entry in split_entries if os.path.isdir(entry)]
    for orphan in _labels_without_images(folders, set(labels.values())):
        bad.drop_label_file(orphan, "a label file without an image")
    boxes = {}
    for image, label in labels.items():
        if os.path.exists(label):
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
    splits = {split: _detection_examples(split_images, [arrays[image] for image in split_images], normalised=True)
              for split, split_images in images.items()}
    bad.warn(f"yolo:{path}")
    return Source(f"yolo:{path}", names, splits, bad.notes, box_class_names=names, image_labels=False)


# Pascal VOC ------------------------------------------------------------------------------------------------


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _voc_image(root: ElementTree.Element, xml: str, images_dir: str) -> str | None:
    """The image of an annotation: its <filename> in JPEGImages, else the XML's stem with an image extension."""
    stem = os.path.splitext(os.path.basename(xml))[0]
    candidates = [(root.findtext("filename") or "").strip(), *(stem + extension for extension in IMAGE_EXTENSIONS)]
    found = [os.path.join(images_dir, c) for c in candidates if c and os.path.isfile(os.path.join(images_dir, c))]
    return found[0] if found else None


def _read_voc_xml(xml: str, images_dir: str, bad: BadLabels) -> tuple[str | None, list[Box]]:
    """The image and boxes of one VOC annotation; its bad objects, or its missing image (then None and no
    boxes), go to `bad`."""
    try:
        root = ElementTree.parse(xml).getroot()
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
    files = {split: path for split, path in files.items() if os.path.isfile(path)}
    if "train" not in files or len(files) == 1:
        return None
    if "val" not in files:
        files["val"] = files.pop("test")
    ids = {}
    for split, listing in files.items():
        with open(listing) as f:
            ids[split] = [line.split()[0] for line in f if line.strip()]
    return ids


def voc_source(directory: str, skip_bad_labels: bool = False, class_names: list[str] | None = None,
               val_fraction: float = 0.2, seed: int = 0) -> Source:
    """Pascal VOC: boxes in pixels from DIR/Annotations/*.xml (difficult objects kept), images in
    DIR/JPEGImages, splits from DIR/ImageSets/Main or else `val_fraction` held out (seeded); classes are
    `class_names`, else every name in the XML files, sorted. An image without an XML has no objects."""
    annotations_dir, images_dir = os.path.join(directory, "Annotations"), os.path.join(directory, "JPEGImages")
    for folder in (annotations_dir, images_dir):
        if not os.path.isdir(folder):
            raise DataError(f"{directory}: no {os.path.basename(folder)}/ folder (--dataset=voc:DIR needs "
                            "DIR/JPEGImages and DIR/Annotations)")
    bad = BadLabels(skip_bad_labels)
    parsed, without_images = {}, set()  # image id (the XML's stem) -> (image, boxes); ids dropped
    for name in sorted(f for f in os.listdir(annotations_dir) if f.lower().endswith(".xml")):
        image, boxes = _read_voc_xml(os.path.join(annotations_dir, name), images_dir, bad)
        if image is None:
            without_images.add(os.path.splitext(name)[0])
        else:
            parsed[os.path.splitext(name)[0]] = (image, boxes)
    labelled = {image for image, _ in parsed.values()}
    for image in _images_in(images_dir):
        key = os.path.splitext(os.path.basename(image))[0]
        if image not in labelled and key not in parsed:
            parsed[key] = (image, [])
            bad.notes["images_without_labels"].append(image)
    names = list(class_names or sorted({box.name for _, boxes in parsed.values() for box in boxes}))
    index = {name: i for i, name in enumerate(names)}
    arrays = {key: box_arrays(boxes, index, bad) for key, (_, boxes) in sorted(parsed.items())}
    source = f"voc:{directory}"
    examples = lambda keys: _detection_examples([parsed[k][0] for k in keys], [arrays[k] for k in keys],  # noqa: E731
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
