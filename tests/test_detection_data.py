"""Detection data: YOLO (data YAML, plain folder, Roboflow layout), Pascal VOC and COCO boxes through the real
pipeline, bad labels and --skip_bad_labels, TFRecord boxes, and coco8 and BCCD when ../shared is there."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from datasets import pipeline
from datasets.recipes import DetectionRecipe
from datasets.sources import polygons, spec, tfrecord, voc, yolo
from datasets.sources.base import DataError
from tests.conftest import SHARED_DATA

COCO8 = os.path.join(SHARED_DATA, "coco8")
BCCD = os.path.join(SHARED_DATA, "bccd", "BCCD")
HEIGHT, WIDTH = 40, 60  # fixture images; letterboxed into 60 x 60 they move down by 10 pixels
SIZE = 60
NAMES = ["cat", "dog"]


def _image(path, height=HEIGHT, width=WIDTH):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(np.full((height, width, 3), 90, np.uint8)))


def _boxes(k):
    """Image k's pixel boxes and classes: one or two, different for every k."""
    boxes = np.array([[2 + 3 * k, 4, 20 + 3 * k, 30], [30, 5 + k, 58, 36]], np.float32)
    classes = np.array([k % 2, 1 - k % 2], np.int32)
    return boxes[:1 + k % 2], classes[:1 + k % 2]


def _yolo_lines(boxes, classes):
    return "".join(f"{c} {(x0 + x1) / 2 / WIDTH:.7f} {(y0 + y1) / 2 / HEIGHT:.7f} {(x1 - x0) / WIDTH:.7f} "
                   f"{(y1 - y0) / HEIGHT:.7f}\n" for (x0, y0, x1, y1), c in zip(boxes, classes))


def _write_yolo(root, layout="yaml"):
    """3 train and 2 val images (the last without a label file) in `layout`: "yaml" (images/SPLIT with a
    data.yaml), "folder" (the same without it) or "roboflow" (SPLIT/images, valid/, a data.yaml in Roboflow's
    style). Returns {image path: (boxes, classes)}."""
    folders = {"train": "train", "val": "valid"} if layout == "roboflow" else {"train": "train", "val": "val"}
    expected, k = {}, 0
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            parts = (folders[split], "{}") if layout == "roboflow" else ("{}", folders[split])
            image = os.path.join(root, *(p.format("images") for p in parts), f"{split}{i}.jpg")
            _image(image)
            boxes, classes = _boxes(k) if (split, i) != ("val", 1) else (np.zeros((0, 4), np.float32), [])
            if (split, i) != ("val", 1):
                label = os.path.join(root, *(p.format("labels") for p in parts), f"{split}{i}.txt")
                os.makedirs(os.path.dirname(label), exist_ok=True)
                with open(label, "w") as f:
                    f.write(_yolo_lines(boxes, classes))
            expected[image] = (boxes, np.asarray(classes, np.int32))
            k += 1
    if layout == "yaml":
        with open(os.path.join(root, "data.yaml"), "w") as f:
            f.write("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    if layout == "roboflow":
        with open(os.path.join(root, "data.yaml"), "w") as f:
            f.write("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n")
    return expected


def _voc_xml(filename, objects, width=WIDTH, height=HEIGHT):
    found = "".join(f"<object><name>{name}</name><difficult>{i % 2}</difficult><bndbox><xmin>{x0:g}</xmin>"
                    f"<ymin>{y0:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
                    for i, (name, (x0, y0, x1, y1)) in enumerate(objects))
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{found}</annotation>")


def _write_voc(root, image_sets=True):
    """5 images with VOC XML (class names "dog" and "cat": sorted, cat is 0), split 3/2 by ImageSets/Main when
    `image_sets`. Returns {image path: (boxes, classes)}."""
    expected = {}
    os.makedirs(os.path.join(root, "Annotations"))
    for k in range(5):
        image = os.path.join(root, "JPEGImages", f"im{k}.jpg")
        _image(image)
        boxes, classes = _boxes(k)
        with open(os.path.join(root, "Annotations", f"im{k}.xml"), "w") as f:
            f.write(_voc_xml(f"im{k}.jpg", [(NAMES[c], box) for box, c in zip(boxes, classes)]))
        expected[image] = (boxes, classes)
    if image_sets:
        os.makedirs(os.path.join(root, "ImageSets", "Main"))
        for split, ids in (("train", "im0 im1 im2"), ("val", "im3 im4")):
            with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.write("\n".join(ids.split()) + "\n")
    return expected


def _write_coco(root):
    """4 images, categories 7 "box" and 3 "blob" (box classes in id order: blob 0, box 1), a crowd annotation
    (no box) and an image without annotations. Returns the JSON path and {image path: (boxes, classes)}."""
    images, annotations, expected = [], [], {}
    for k in range(4):
        path = os.path.join(root, f"c{k}.jpg")
        _image(path)
        images.append({"id": k + 1, "file_name": f"c{k}.jpg", "height": HEIGHT, "width": WIDTH})
        boxes, classes = _boxes(k) if k < 3 else (np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
        for box, c in zip(boxes, classes):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": [3, 7][c],
                                "iscrowd": 0, "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        expected[path] = (boxes, classes)
    annotations.append({"id": 99, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 4, "bbox": [0, 0, 2, 2],
                        "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]})
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 7, "name": "box"}, {"id": 3, "name": "blob"}]}, f)
    return path, expected


def _pipeline_boxes(split, max_boxes=4, size=SIZE):
    """Each example's letterboxed boxes and classes, in order, from the real evaluation pipeline."""
    config = pipeline.PipelineConfig(DetectionRecipe(size, max_boxes=max_boxes), global_batch_size=len(split),
                                     training=False, deterministic=True)
    batch = next(pipeline.build_dataset(split, config).as_numpy_iterator())
    return [(boxes[classes >= 0], classes[classes >= 0]) for boxes, classes in zip(batch["boxes"], batch["classes"])]


def _letterboxed(boxes):
    return boxes + np.float32([0, (SIZE - HEIGHT) / 2] * 2)


def _check_through_pipeline(source, expected):
    seen = 0
    for split in source.splits.values():
        for path, (boxes, classes) in zip(split.paths, _pipeline_boxes(split)):
            np.testing.assert_allclose(boxes, _letterboxed(expected[path][0]), atol=1e-3, err_msg=path)
            np.testing.assert_array_equal(classes, expected[path][1], err_msg=path)
            seen += 1
    assert seen == len(expected)


@pytest.mark.parametrize("layout", ["yaml", "folder", "roboflow"])
def test_yolo_boxes_come_out_in_pixels(tmp_path, layout):
    expected = _write_yolo(str(tmp_path), layout)
    source = spec.load(f"yolo:{tmp_path / 'data.yaml'}" if layout == "yaml" else f"yolo:{tmp_path}", cache_dir="")
    names = ["0", "1"] if layout == "folder" else NAMES
    assert (source.box_class_names, source.class_names, source.image_labels) == (names, names, False)
    assert (len(source.splits["train"]), len(source.splits["val"])) == (3, 2)
    assert source.splits["val"].labels == [-1, -1] and source.splits["val"].boxes_normalised
    assert [os.path.basename(p) for p in source.notes["images_without_labels"]] == ["val1.jpg"]
    assert source.splits["train"].most_boxes() == 2
    assert source.splits["val"].subset([0]).boxes_normalised
    _check_through_pipeline(source, expected)


def test_yolo_yaml_with_a_list_of_folders_and_a_txt_file_of_images(tmp_path):
    expected = _write_yolo(str(tmp_path))
    with open(tmp_path / "val.txt", "w") as f:
        f.write("./images/val/val0.jpg\nimages/val/val1.jpg\n")
    with open(tmp_path / "data.yaml", "w") as f:
        f.write(f"path: {tmp_path}\ntrain: [images/train]\nval: val.txt\nnames: [cat, dog]\n")
    source = yolo.yolo_source(str(tmp_path / "data.yaml"))
    assert source.box_class_names == NAMES and (len(source.splits["train"]), len(source.splits["val"])) == (3, 2)
    _check_through_pipeline(source, expected)
    with open(tmp_path / "val.txt", "a") as f:
        f.write("images/val/gone.jpg\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'val.txt'}:3: image ") + ".*gone.jpg"):
        yolo.yolo_source(str(tmp_path / "data.yaml"))


@pytest.mark.parametrize("image_sets", [True, False])
def test_voc_boxes_classes_and_splits(tmp_path, image_sets):
    expected = _write_voc(str(tmp_path), image_sets)
    source = spec.load(f"voc:{tmp_path}", cache_dir="", val_fraction=0.4, seed=1)
    assert source.box_class_names == NAMES and not source.image_labels
    train, val = source.splits["train"], source.splits["val"]
    if image_sets:
        assert [os.path.basename(p) for p in val.paths] == ["im3.jpg", "im4.jpg"]
    assert (len(train), len(val)) == (3, 2) and sorted(train.paths + val.paths) == sorted(expected)
    assert not train.boxes_normalised
    _check_through_pipeline(source, expected)


def test_coco_source_carries_boxes_beside_its_masks(tmp_path):
    path, expected = _write_coco(str(tmp_path))
    source = spec.load(f"coco:{path}", cache_dir=str(tmp_path / "cache"), val_fraction=0.5)
    assert source.box_class_names == ["blob", "box"] and source.mask_class_names == ["background", "blob", "box"]
    assert [os.path.basename(p) for p in source.notes["images_without_labels"]] == ["c3.jpg"]
    _check_through_pipeline(source, expected)
    masks = np.stack([tf.io.decode_png(tf.io.read_file(path)).numpy() for split in source.splits.values()
                      for path in split.mask_paths])
    assert set(np.unique(masks)) == {0, 1, 2}


YOLO_BAD_LINES = {
    "no area": "0 0.5 0.5 0 0.2",
    "outside": "1 0.9 0.5 0.4 0.2",
    "unknown class": "5 0.5 0.5 0.2 0.2",
    "malformed": "0 0.5 0.5 0.2",
}


@pytest.mark.parametrize("problem", sorted(YOLO_BAD_LINES))
def test_bad_yolo_lines_name_the_file_and_line_or_are_dropped(tmp_path, caplog, problem):
    expected = _write_yolo(str(tmp_path))
    label = str(tmp_path / "labels" / "train" / "train1.txt")  # two good lines, the bad one third
    with open(label, "a") as f:
        f.write(YOLO_BAD_LINES[problem] + "\n")
    with pytest.raises(DataError, match=re.escape(f"{label}:3: ") + ".*--skip_bad_labels"):
        yolo.yolo_source(str(tmp_path / "data.yaml"))
    source = spec.load(f"yolo:{tmp_path}", cache_dir="", skip_bad_labels=True)
    assert [note.split(": ")[0] for note in source.notes["dropped_boxes"]] == [f"{label}:3"]
    assert "dropped 1 bad boxes" in caplog.text
    _check_through_pipeline(source, expected)


def test_yolo_boxes_slightly_outside_are_clipped_and_labels_without_images_are_errors(tmp_path):
    _write_yolo(str(tmp_path))
    with open(tmp_path / "labels" / "val" / "val0.txt", "w") as f:
        f.write("1 0.9 0.5 0.208 0.2\n")  # x1 = 1.004: within 1% of the width
    ghost = str(tmp_path / "labels" / "train" / "ghost.txt")
    with open(ghost, "w") as f:
        f.write("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=re.escape(ghost) + ".*without an image"):
        yolo.yolo_source(str(tmp_path / "data.yaml"))
    source = yolo.yolo_source(str(tmp_path / "data.yaml"), skip_bad_labels=True)
    assert source.notes["labels_without_images"] == [ghost] and not source.notes["dropped_boxes"]
    np.testing.assert_allclose(source.splits["val"].boxes[0], [[0.796, 0.4, 1.0, 0.6]], atol=1e-6)


@pytest.mark.parametrize("name, box, message", [
    ("cat", (10, 10, 10, 20), "has no area"),
    ("cat", (10, 10, 64, 20), "outside the 60x40 image"),
    ("bird", (10, 10, 20, 20), "unknown class 'bird'"),
])
def test_bad_voc_objects_name_the_file_and_object_or_are_dropped(tmp_path, name, box, message):
    expected = _write_voc(str(tmp_path))
    xml = str(tmp_path / "Annotations" / "im1.xml")
    boxes, classes = expected[str(tmp_path / "JPEGImages" / "im1.jpg")]
    with open(xml, "w") as f:
        f.write(_voc_xml("im1.jpg", [(NAMES[c], b) for b, c in zip(boxes, classes)] + [(name, box)]))
    with pytest.raises(DataError, match=re.escape(f"{xml} object 3: ") + f".*{message}.*--skip_bad_labels"):
        voc.voc_source(str(tmp_path), class_names=NAMES)
    source = voc.voc_source(str(tmp_path), skip_bad_labels=True, class_names=NAMES)
    assert len(source.notes["dropped_boxes"]) == 1 and message in source.notes["dropped_boxes"][0]
    _check_through_pipeline(source, expected)
    os.remove(tmp_path / "JPEGImages" / "im1.jpg")
    with pytest.raises(DataError, match=re.escape(xml) + ".*im1.jpg"):
        voc.voc_source(str(tmp_path), skip_bad_labels=False)


def test_bad_coco_boxes_name_the_file_or_are_dropped(tmp_path):
    path, expected = _write_coco(str(tmp_path))
    with open(path) as f:
        document = json.load(f)
    document["annotations"] += [
        {"id": 50, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 0, "bbox": [5, 5, 0, 10],
         "segmentation": [[5, 5, 5, 15, 5, 5]]},
        {"id": 51, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 10, "bbox": [50, 5, 20, 10],
         "segmentation": [[50, 5, 60, 5, 60, 15]]}]
    with open(path, "w") as f:
        json.dump(document, f)
    with pytest.raises(DataError, match=re.escape(f"{path} annotation 50") + ".*no area.*--skip_bad_labels"):
        polygons.coco_source(path, str(tmp_path / "cache"))
    source = spec.load(f"coco:{path}", cache_dir=str(tmp_path / "cache"), skip_bad_labels=True)
    dropped = source.notes["dropped_boxes"]
    assert len(dropped) == 2 and "annotation 51" in dropped[1] and "outside the 60x40 image" in dropped[1]
    _check_through_pipeline(source, expected)


@pytest.mark.parametrize("kind", ["yolo", "voc"])
def test_tfrecord_shards_keep_the_boxes(tmp_path, kind):
    root = str(tmp_path / kind)
    _write_yolo(root) if kind == "yolo" else _write_voc(root)
    source = spec.load(f"{kind}:{root}", cache_dir="")
    metadata = tfrecord.convert(source, str(tmp_path / "shards"), num_shards=2)
    assert metadata["box_class_names"] == source.box_class_names and metadata["max_boxes_per_image"] == 2
    assert "image/object/bbox/xmin" in metadata["feature_keys"]
    converted = tfrecord.tfrecord_source(str(tmp_path / "shards"))
    assert converted.box_class_names == source.box_class_names and not converted.image_labels
    for name, split in converted.splits.items():
        assert split.most_boxes() == source.splits[name].most_boxes()
        by_first_box = lambda found: sorted(found, key=lambda bc: tuple(bc[0].ravel()))  # noqa: E731
        loose, shards = (by_first_box(_pipeline_boxes(s)) for s in (source.splits[name], split))
        assert len(loose) == len(shards) == len(split)
        for (boxes, classes), (shard_boxes, shard_classes) in zip(loose, shards):
            np.testing.assert_allclose(shard_boxes, boxes, atol=1e-3)
            np.testing.assert_array_equal(shard_classes, classes)
    record = next(tf.data.TFRecordDataset(converted.splits["train"].files).as_numpy_iterator())
    fractions = tf.train.Example.FromString(record).features.feature["image/object/bbox/xmax"].float_list.value
    assert 0 < min(fractions) and max(fractions) <= 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"more boxes than --max_boxes.*\.jpg"):
        _pipeline_boxes(converted.splits["train"], max_boxes=1)


@pytest.mark.skipif(not os.path.isdir(COCO8), reason="../shared/data/coco8 is absent")
def test_coco8_yaml():
    source = yolo.yolo_source(os.path.join(COCO8, "data.yaml"))
    assert len(source.box_class_names) == 80 and source.box_class_names[:3] == ["person", "bicycle", "car"]
    assert (len(source.splits["train"]), len(source.splits["val"])) == (4, 4)
    assert not any(source.notes.values())
    boxes = np.concatenate([b for split in source.splits.values() for b in split.boxes])
    classes = np.concatenate([c for split in source.splits.values() for c in split.box_classes])
    assert len(boxes) == 30 and boxes.min() >= 0 and boxes.max() <= 1 and np.all(boxes[:, 2:] > boxes[:, :2])
    assert classes.min() >= 0 and classes.max() < 80
    val = source.splits["val"]
    found = _pipeline_boxes(val, max_boxes=val.most_boxes(), size=320)
    assert sum(len(classes) for _, classes in found) == sum(len(classes) for classes in val.box_classes)
    assert all(boxes.min() >= 0 and boxes.max() <= 320 for boxes, _ in found if len(boxes))


@pytest.mark.skipif(not os.path.isdir(BCCD), reason="../shared/data/bccd is absent")
def test_bccd_has_two_zero_size_boxes():
    zero_size = r"BloodImage_00338\.xml object 13|BloodImage_00343\.xml object 4"
    with pytest.raises(DataError, match=zero_size):
        voc.voc_source(BCCD)
    source = voc.voc_source(BCCD, skip_bad_labels=True)
    assert source.box_class_names == ["Platelets", "RBC", "WBC"]
    assert {name: len(split) for name, split in source.splits.items()} == {"train": 205, "val": 87, "test": 72}
    assert len(source.notes["dropped_boxes"]) == 2
    assert all(re.search(zero_size, note) and "no area" in note for note in source.notes["dropped_boxes"])
    assert sum(len(c) for split in source.splits.values() for c in split.box_classes) == 4888 - 2
