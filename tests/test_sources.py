"""Data sources: the folder layout, its class order, splits and errors."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import keras

from datasets import pipeline
from datasets.recipes import ClassificationRecipe
from datasets.sources import folder, idx, spec, tfrecord
from datasets.sources.base import DataError
from tests.conftest import SHARED_DATA, run_launch


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


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
    source = folder.folder_source(root, val_fraction=0.2, seed=0)
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
    a = folder.folder_source(root, val_fraction=0.3, seed=1)
    b = folder.folder_source(root, val_fraction=0.3, seed=1)
    assert a.splits["val"].paths == b.splits["val"].paths
    assert not set(a.splits["val"].paths) & set(a.splits["train"].paths)
    assert len(a.splits["val"]) == 15


@pytest.mark.parametrize("spec_text, message", [
    ("nosuchkind:/x", "unknown kind 'nosuchkind'"),
    ("folder", "needs a path"),
    ("folder:/does/not/exist", "/does/not/exist: not a directory"),
])
def test_bad_dataset_specs_name_the_problem(spec_text, message):
    with pytest.raises(DataError, match=message):
        spec.load(spec_text, cache_dir="")


def test_folder_without_images_is_an_error(tmp_path):
    os.makedirs(tmp_path / "empty" / "classA")
    with pytest.raises(DataError, match="no images"):
        folder.folder_source(str(tmp_path / "empty"), 0.2, 0)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory):
    """IDX files (train gzip, t10k plain) of random 8x8 grey images in 3 classes."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n, gz in (("train", 24, ".gz"), ("t10k", 9, "")):
        images, labels = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % 3
        _write_idx(str(root / f"{prefix}-images-idx3-ubyte{gz}"), images)
        _write_idx(str(root / f"{prefix}-labels-idx1-ubyte{gz}"), labels)
        arrays[prefix] = (images, labels)
    return str(root), arrays


def _decoded_set(source):
    """{split: sorted (label, pixels) pairs} read through the real evaluation pipeline."""
    result = {}
    for name, split in source.splits.items():
        config = pipeline.PipelineConfig(ClassificationRecipe(8), global_batch_size=4, training=False)
        pairs = []
        for batch in pipeline.build_dataset(split, config).take(pipeline.eval_steps(len(split), 4)):
            pairs += [(int(l), i.tobytes()) for i, l, w in
                      zip(batch["image"].numpy(), batch["label"].numpy(), batch["weight"].numpy()) if w]
        result[name] = sorted(pairs)
    return result


def test_idx_folder_and_tfrecord_yield_the_same_images_and_labels(tiny_idx, tmp_path):
    root, arrays = tiny_idx
    idx_source = idx.idx_source(root)
    assert idx_source.class_names == ["0", "1", "2"]
    assert (len(idx_source.splits["train"]), len(idx_source.splits["val"])) == (24, 9)
    for prefix, split in (("train", "train"), ("t10k", "val")):
        for i, (image, label) in enumerate(zip(*arrays[prefix])):
            _write_png(str(tmp_path / "folder" / split / str(label) / f"{i}.png"), image[..., None])
    folder_source = folder.folder_source(str(tmp_path / "folder"), 0.2, 0)
    tfrecord.convert(idx_source, str(tmp_path / "from_idx"), num_shards=4)
    tfrecord.convert(folder_source, str(tmp_path / "from_folder"), num_shards=3)
    expected = _decoded_set(idx_source)
    assert len(expected["train"]) == 24
    assert _decoded_set(folder_source) == expected
    assert _decoded_set(spec.load(f"tfrecord:{tmp_path / 'from_idx'}", "")) == expected
    assert _decoded_set(spec.load(f"tfrecord:{tmp_path / 'from_folder'}", "")) == expected


def test_converter_metadata_lists_shards_counts_and_sizes(tiny_idx, tmp_path):
    metadata = tfrecord.convert(idx.idx_source(tiny_idx[0]), str(tmp_path), num_shards=5)
    assert metadata["splits"]["train"]["counts"] == [5, 5, 5, 5, 4]
    assert metadata["splits"]["val"]["num_examples"] == 9
    assert metadata["image_sizes"]["height"] == {"min": 8, "median": 8.0, "max": 8}
    assert sorted(os.listdir(tmp_path))[0] == "metadata.json" and not any(n.endswith(".tmp") for n in os.listdir(tmp_path))


def test_truncated_idx_file_is_named(tmp_path):
    _write_idx(str(tmp_path / "train-images-idx3-ubyte"), np.zeros((4, 8, 8), np.uint8))
    with open(tmp_path / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: header declares shape"):
        idx.read_idx(str(tmp_path / "train-images-idx3-ubyte"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "fashion-mnist")),
                    reason="../shared/data/fashion-mnist is not present")
def test_real_fashion_mnist_idx():
    source = idx.idx_source(os.path.join(SHARED_DATA, "fashion-mnist"))
    train, val = source.splits["train"], source.splits["val"]
    assert (len(train), len(val)) == (60000, 10000)
    assert train.images.shape[1:] == (28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(val.labels).tolist() == [1000] * 10


_TFDS_ARRAYS = {}


def _tiny_tfds_builder_class():
    import tensorflow_datasets as tfds

    class TinyIdxTfds(tfds.core.GeneratorBasedBuilder):
        """The tiny_idx arrays as a TFDS dataset (PNG images), prepared offline."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["0", "1", "2"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train"), "test": self._generate_examples("t10k")}

        def _generate_examples(self, prefix):
            for i, (image, label) in enumerate(zip(*_TFDS_ARRAYS[prefix])):
                yield i, {"image": image[..., None], "label": int(label)}

    return TinyIdxTfds


@pytest.mark.slow
def test_tfds_offline_yields_the_same_images_and_labels_as_idx(tiny_idx, tmp_path):
    root, arrays = tiny_idx
    _TFDS_ARRAYS.update(arrays)
    data_dir = str(tmp_path / "tfds")
    _tiny_tfds_builder_class()(data_dir=data_dir).download_and_prepare()
    source = spec.load("tfds:tiny_idx_tfds", "", data_dir=data_dir)
    assert source.class_names == ["0", "1", "2"]
    assert _decoded_set(source) == _decoded_set(idx.idx_source(root))
    result = run_launch("--dataset=tfds:tiny_idx_tfds", f"--data_dir={data_dir}", "--strategy=mirrored",
                        "--epochs=1", "--batch_size=4", "--image_size=8", "--verbose=0",
                        f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "24 train / 9 val" in result.stdout


def test_tfds_dataset_that_is_not_prepared_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError, match="mnist is not prepared .* `tfds build mnist"):
        spec.load("tfds:mnist", "", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="TFDS knows no dataset 'no_such_dataset_xyz'"):
        spec.load("tfds:no_such_dataset_xyz", "", data_dir=str(tmp_path))
