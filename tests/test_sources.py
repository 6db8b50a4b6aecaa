"""Data sources: the folder layout, its class order, splits and errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
import keras

from datasets import sources, spec


def _write_image(path, value, fmt="jpg", channels=3):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((8, 8, channels), value, np.uint8)
    data = tf.io.encode_jpeg(image) if fmt == "jpg" else tf.io.encode_png(image)
    tf.io.write_file(path, data)


def _class_tree(root, classes=("dog", "Cat", "ant", "bee_2", "bee_10"), per_class=3):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _write_image(os.path.join(root, name, f"img{i}.{'JPG' if i == 0 else 'png'}"), 10 * c, "png" if i else "jpg")
    return root


def test_folder_class_order_matches_image_dataset_from_directory(tmp_path):
    root = _class_tree(str(tmp_path / "tree"))
    source = sources.folder_source(root, val_fraction=0.2, seed=0)
    reference = keras.utils.image_dataset_from_directory(root, batch_size=4, image_size=(8, 8), verbose=False)
    assert source.class_names == reference.class_names
    assert len(source.splits["train"]) + len(source.splits["val"]) == 15


def test_folder_with_train_and_val_subfolders_uses_them(tmp_path):
    _class_tree(str(tmp_path / "d" / "train"), classes=("a", "b"), per_class=4)
    _class_tree(str(tmp_path / "d" / "val"), classes=("a", "b"), per_class=2)
    source = spec.load(f"folder:{tmp_path / 'd'}", cache_dir="")
    assert source.class_names == ["a", "b"]
    assert (len(source.splits["train"]), len(source.splits["val"])) == (8, 4)
    assert sorted(source.splits["val"].labels) == [0, 0, 1, 1]


def test_seeded_split_is_disjoint_and_reproducible(tmp_path):
    root = _class_tree(str(tmp_path / "tree"), per_class=10)
    a = sources.folder_source(root, val_fraction=0.3, seed=1)
    b = sources.folder_source(root, val_fraction=0.3, seed=1)
    assert a.splits["val"].paths == b.splits["val"].paths
    assert not set(a.splits["val"].paths) & set(a.splits["train"].paths)
    assert len(a.splits["val"]) == 15


@pytest.mark.parametrize("spec_text, message", [
    ("nosuchkind:/x", "unknown kind 'nosuchkind'"),
    ("folder", "needs a path"),
    ("folder:/does/not/exist", "/does/not/exist: not a directory"),
])
def test_bad_dataset_specs_name_the_problem(spec_text, message):
    with pytest.raises(sources.DataError, match=message):
        spec.load(spec_text, cache_dir="")


def test_folder_without_images_is_an_error(tmp_path):
    os.makedirs(tmp_path / "empty" / "classA")
    with pytest.raises(sources.DataError, match="no images"):
        sources.folder_source(str(tmp_path / "empty"), 0.2, 0)
