"""Bad input files: an error naming the file, or a counted, logged skip; and the inspect report."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets import pipeline, tools
from datasets.recipes import ClassificationRecipe
from datasets.sources import folder, shapes
from datasets.sources.base import DataError
from tests.conftest import run_launch


def _jpeg(seed=0):
    return tf.io.encode_jpeg(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).numpy()


def _png(seed=0):
    return tf.io.encode_png(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).numpy()


def _broken_huffman_table(jpeg):
    """A JPEG whose start and end are intact but whose first Huffman table is garbage."""
    at = jpeg.find(b"\xff\xc4")
    return jpeg[: at + 4] + b"\xff" * 40 + jpeg[at + 44:]


BAD = {
    "zero.jpg": b"",
    "tiny.png": b"\x89PNG",  # shorter than the 8 bytes the check reads first
    "text.jpg": b"this is not an image at all",
    "truncated.jpg": _jpeg(1)[: len(_jpeg(1)) // 2],
    "truncated.png": _png(2)[: len(_png(2)) // 2],
    "corrupt_tables.jpg": _broken_huffman_table(_jpeg(3)),
}


def _folder(root, bad_name=None, split="val"):
    for split_name in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(os.path.join(root, split_name, label), exist_ok=True)
            for i in range(4):
                with open(os.path.join(root, split_name, label, f"{i}.jpg"), "wb") as f:
                    f.write(_jpeg(i + 10 * (label == "b")))
    if bad_name:
        path = os.path.join(root, split, "b", bad_name)
        with open(path, "wb") as f:
            f.write(BAD[bad_name])
        return path
    return None


def _read_all(split, training):
    config = pipeline.PipelineConfig(ClassificationRecipe(16), global_batch_size=2, training=training)
    steps = len(split) if training else pipeline.eval_steps(len(split), 2)
    for _ in pipeline.build_dataset(split, config).take(steps):
        pass


@pytest.mark.parametrize("bad_name", sorted(BAD))
@pytest.mark.parametrize("training", [False, True])
def test_bad_file_stops_the_run_with_its_name(tmp_path, bad_name, training):
    bad_path = _folder(str(tmp_path), bad_name, split="train" if training else "val")
    source = folder.folder_source(str(tmp_path), 0.2, 0)
    split = source.splits["train" if training else "val"]
    with pytest.raises(DataError, match=bad_path.replace(".", r"\.")):
        with tools.naming_bad_files(source):
            _read_all(split, training)


def test_scan_finds_and_skip_drops_exactly_the_bad_files(tmp_path):
    planted = []
    for name, data in BAD.items():
        planted.append(_folder(str(tmp_path), None) or os.path.join(tmp_path, "train", "a", name))
        with open(planted[-1], "wb") as f:
            f.write(data)
    source = folder.folder_source(str(tmp_path), 0.2, 0)
    dropped = tools.drop_bad_files(source)
    assert sorted(dropped["train"]) == sorted(planted) and dropped["val"] == {}
    assert dropped["train"][os.path.join(tmp_path, "train", "a", "zero.jpg")] == "zero bytes"
    assert len(source.splits["train"]) == 8
    assert source.splits["train"].labels == [0, 0, 0, 0, 1, 1, 1, 1]
    _read_all(source.splits["train"], training=True)


@pytest.mark.slow
def test_skip_bad_files_flag_counts_and_logs(tmp_path):
    bad_path = _folder(str(tmp_path / "data"), "truncated.jpg", split="train")
    result = run_launch(f"--dataset=folder:{tmp_path / 'data'}", "--skip_bad_files", "--epochs=1",
                        "--batch_size=4", "--image_size=16", "--verbose=0", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--skip_bad_files: 1 bad files left out of train" in result.stdout
    assert bad_path in result.stdout
    # 2 epochs of 2 steps of 4 read 16 > 9 files of the repeated, reshuffled stream: the bad one is reached
    result = run_launch(f"--dataset=folder:{tmp_path / 'data'}", "--epochs=2", "--batch_size=4",
                        "--image_size=16", "--verbose=0", f"--model_dir={tmp_path / 'run2'}")
    assert result.returncode == 2 and bad_path in result.stderr and "--skip_bad_files" in result.stderr


@pytest.mark.slow
def test_inspect_reports_planted_problems(tmp_path):
    root = str(tmp_path / "data")
    bad_path = _folder(root, "text.jpg", split="train")
    os.makedirs(os.path.join(root, "train", "c_empty"))
    os.makedirs(os.path.join(root, "val", "c_empty"))
    with open(os.path.join(root, "train", "loose.jpg"), "wb") as f:
        f.write(_jpeg(7))
    with open(os.path.join(root, "train", "a", "notes.txt"), "w") as f:
        f.write("not an image")
    result = run_launch(f"--dataset=folder:{root}", "--mode=inspect", f"--model_dir={tmp_path / 'report'}")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "report" / "inspect.json") as f:
        report = json.load(f)
    train_entry = report["splits"]["train"]
    assert train_entry["per_class"] == {"a": 4, "b": 5, "c_empty": 0}
    assert list(train_entry["bad_files"]) == [bad_path]
    assert train_entry["empty_classes"] == ["c_empty"]
    assert train_entry["image_size"]["height"] == {"min": 24, "median": 24.0, "max": 24}
    assert report["images_without_labels"] == [os.path.join(root, "train", "loose.jpg")]
    assert report["ignored_files"] == [os.path.join(root, "train", "a", "notes.txt")]
    assert bad_path in result.stdout and "empty_classes: 1" in result.stdout


def test_inspect_finds_labels_without_images(tiny_shapes, tmp_path):
    import shutil
    copy = str(tmp_path / "shapes")
    shutil.copytree(tiny_shapes, copy)
    missing = os.path.join(copy, "val", "images", "val_000003.jpg")
    os.remove(missing)
    report = tools.inspect(shapes.shapes_source(copy))
    assert report["splits"]["val"]["labels_without_images"] == [missing]
    assert report["splits"]["train"]["bad_files"] == {}
