"""Cloud storage (issue 18): every file the engine reads and writes goes through tf.io.gfile, so gs:// works on
Cloud TPU. Tested on TensorFlow's in-memory file system, ram://, which exists inside one process only: the
engine runs in-process here, its data and run directory in ram://."""

import csv
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import run_in_process
from datasets.sources.base import absolute, normalised
from engine import files

CLASSES = {"red": (200, 30, 30), "blue": (30, 30, 200)}


@pytest.fixture
def ram_dir():
    """A fresh ram:// folder, removed after the test."""
    root = f"ram://{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(root)
    yield root
    tf.io.gfile.rmtree(root)


def _read(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def test_a_rewritten_file_replaces_the_old_one_on_ram(ram_dir):
    path = f"{ram_dir}/summary.json"
    files.write_json(path, {"epochs": 10, "note": "a longer first version"})
    files.write_json(path, {"epochs": 2})
    assert files.read_json(path) == {"epochs": 2}
    with tf.io.gfile.GFile(files.partial_path(path), "w") as f:  # left by a run killed mid-write
        f.write("cut sh")
    files.write_file(path, "whole")
    assert _read(path) == "whole" and tf.io.gfile.listdir(ram_dir) == ["summary.json"]


def test_paths_with_a_scheme_keep_it():
    assert normalised("gs://bucket/data/../images/") == "gs://bucket/images"
    assert normalised("data/./images/") == os.path.normpath("data/images")
    assert absolute("gs://bucket/a/b.yaml") == "gs://bucket/a/b.yaml"
    assert absolute("a/b.yaml") == os.path.abspath("a/b.yaml")


def _write_class_folders(root: str) -> None:
    """A tiny JPEG class-folder dataset: train/ and val/, one folder per class of noisy solid colour."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 8)):
        for name, colour in CLASSES.items():
            folder = f"{root}/{split}/{name}"
            tf.io.gfile.makedirs(folder)
            for i in range(count):
                image = np.clip(rng.normal(colour, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(f"{folder}/{i:02d}.jpg", tf.io.encode_jpeg(image))


def _epoch_values(logdir: str, tag: str) -> list[float]:
    """The values TensorBoard's own reader finds for `tag` in `logdir`, one per epoch."""
    accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return [float(tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]


@pytest.mark.slow
def test_train_eval_and_export_read_and_write_only_ram(ram_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would be written under ./ram:/
    data, run_dir = f"{ram_dir}/data", f"{ram_dir}/run"
    _write_class_folders(data)
    flags = [f"--dataset=folder:{data}", f"--model_dir={run_dir}", "--verbose=0"]
    summary = run_in_process(*flags, "--strategy=one_device", "--epochs=2", "--image_size=32", "--batch_size=8",
                             "--preview_batches=1")
    evaluated = run_in_process(*flags, "--mode=eval")  # the run's own flags from its config.json (--image_size=32)
    report = run_in_process(*flags, "--mode=export", "--formats=saved_model,tflite_float32,onnx")
    predicted = run_in_process(*flags, "--mode=predict", f"--images={data}/val")

    expected = ["config.json", "summary.json", "history.csv", "best.keras", "final.keras", "eval.json",
                "eval_config.json", "backup/latest.weights.h5", "backup/training_metadata.json",
                "preview/train_batch0.png", "report/report.json", "report/per_class.csv", "report/results.png",
                "report/confusion_matrix.png", "report/mistakes.png", "export/saved_model/saved_model.pb",
                "export/model_float32.tflite", "export/model.onnx", "export/metadata.json", "export/report.json",
                "predictions/predictions.json", "predictions/predictions.csv", "predictions/drawn/red__07.jpg"]
    assert [name for name in expected if not tf.io.gfile.exists(f"{run_dir}/{name}")] == []
    assert not [path for path in tf.io.gfile.walk(run_dir) for name in path[2] if name.startswith("partial-")]
    assert [name for name in os.listdir(tmp_path) if name.startswith("ram:")] == []

    assert files.read_json(f"{run_dir}/summary.json")["epochs"] == summary["epochs"] == 2
    assert files.read_json(f"{run_dir}/eval_config.json")["image_size"] == 32
    assert files.read_json(f"{run_dir}/eval.json")["val_accuracy"] == evaluated["val_accuracy"]
    assert files.read_json(f"{run_dir}/report/report.json")["weights"] == f"{run_dir}/best.keras"  # rewritten
    with tf.io.gfile.GFile(f"{run_dir}/report/per_class.csv") as f:
        assert [row["class"] for row in csv.DictReader(f)] == ["blue", "red", "macro avg", "weighted avg"]
    with tf.io.gfile.GFile(f"{run_dir}/history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert [row["format"] for row in report["formats"]] == ["keras", "saved_model", "tflite_float32", "onnx"]
    assert not [row for row in report["formats"] if row["failed"]]
    assert files.read_json(f"{run_dir}/export/metadata.json")["class_names"] == ["blue", "red"]
    assert predicted["images"] == 16 and not predicted["left_out"]

    assert len(_epoch_values(f"{run_dir}/tensorboard/train", "epoch_loss")) == 2
    assert _epoch_values(f"{run_dir}/tensorboard/validation", "epoch_accuracy")[-1] == pytest.approx(
        float(summary["val_accuracy"]), abs=1e-6)
