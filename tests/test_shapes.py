"""The generated default dataset: deterministic, consistent labels, boxes and masks, written atomically."""

import json
import os

import numpy as np
import tensorflow as tf

from datasets.sources import shapes


def _annotations(root, split="train"):
    with open(os.path.join(root, split, "annotations.json")) as f:
        return json.load(f)["examples"]


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = shapes.generate(str(tmp_path / "a"), num_train=12, num_val=4, image_size=48, seed=3)
    b = shapes.generate(str(tmp_path / "b"), num_train=12, num_val=4, image_size=48, seed=3)
    c = shapes.generate(str(tmp_path / "c"), num_train=12, num_val=4, image_size=48, seed=4)
    assert _annotations(a) == _annotations(b)
    assert _annotations(a) != _annotations(c)
    name = _annotations(a)[0]["image"]
    with open(os.path.join(a, "train", name), "rb") as fa, open(os.path.join(b, "train", name), "rb") as fb:
        assert fa.read() == fb.read()


def test_boxes_and_masks_describe_the_same_objects(tiny_shapes):
    for record in _annotations(tiny_shapes)[:40]:
        mask = tf.io.decode_png(tf.io.read_file(os.path.join(tiny_shapes, "train", record["mask"])))[..., 0].numpy()
        image = tf.io.decode_jpeg(tf.io.read_file(os.path.join(tiny_shapes, "train", record["image"]))).numpy()
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert record["box_classes"][0] == record["label"], "the first object is the labelled primary"
        areas = []
        for (x0, y0, x1, y1), cls in zip(record["boxes"], record["box_classes"]):
            inside = mask[y0:y1, x0:x1] == cls + 1
            # the box is tight: its border rows and columns touch the object
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            areas.append(inside.sum())
        assert areas[0] == max(areas), "the labelled object is the largest"
        assert set(np.unique(mask)) <= {0} | {c + 1 for c in record["box_classes"]}


def test_classes_are_balanced_enough(tiny_shapes):
    counts = np.bincount([r["label"] for r in _annotations(tiny_shapes)], minlength=len(shapes.CLASS_NAMES))
    assert counts.min() > 0.5 * counts.mean()


def test_existing_dataset_is_reused_not_rewritten(tmp_path):
    root = shapes.generate(str(tmp_path / "s"), num_train=4, num_val=2, image_size=32)
    stamp = os.path.getmtime(os.path.join(root, "metadata.json"))
    shapes.generate(root, num_train=4, num_val=2, image_size=32)
    assert os.path.getmtime(os.path.join(root, "metadata.json")) == stamp
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".shapes-tmp-")], "temporary directory left"
