"""Export and predict: the serving steps against the Keras model, the SavedModel in a process without the
engine, TFLite and ONNX artifacts, the parity check that fails an export, and `--mode=predict` on a folder
with bad files."""

import csv
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_launch
from engine import export, run_dir, runners, tasks
from engine.config import Config, FlagError, ParityError
from engine.serving import Serving

CLASSES = ["circle", "square", "triangle", "star", "cross"]
SIZES = {"classification": 32, "segmentation": 32, "detection": 64}  # YOLOv8 sizes divide by 32


def _serving(task_name: str) -> Serving:
    names = ["background", *CLASSES] if task_name == "segmentation" else CLASSES
    task = tasks.build(Config(task=task_name, image_size=SIZES[task_name]), names)
    return Serving(task, task.build_model())


def _images(tiny_shapes: str) -> list[export.Image]:
    """Four validation JPEGs (64x64) and two PNGs of other shapes: a wide RGB one and a grey one."""
    files = sorted(glob.glob(os.path.join(tiny_shapes, "val", "images", "*.jpg")))[:4]
    images = [export.Image(path, open(path, "rb").read()) for path in files]
    pixels = tf.io.decode_jpeg(images[0].encoded).numpy()
    wide = tf.image.resize(pixels, [40, 90]).numpy().astype(np.uint8)
    images.append(export.Image("wide.png", tf.io.encode_png(wide).numpy()))
    images.append(export.Image("grey.png", tf.io.encode_png(pixels[:50, :, :1]).numpy()))
    return images


def _reference(serving: Serving, images: list[export.Image]) -> dict[str, np.ndarray]:
    """Predictions of the Keras model after the tf.data preprocessing: what export compares against."""
    pixels, sizes = export.preprocessed(serving, images)
    return {k: v.numpy() for k, v in serving.finish(runners.KerasRunner(serving).core(pixels), sizes).items()}


def _assert_same(task_name: str, expected: dict, found: dict, atol: float = 1e-4) -> None:
    assert set(found) == set(expected)
    for key, value in expected.items():
        if value.dtype.kind in "OSU" or value.dtype.kind == "i":
            np.testing.assert_array_equal(found[key], value, err_msg=f"{task_name} {key}")
        else:
            np.testing.assert_allclose(found[key], value, atol=atol, err_msg=f"{task_name} {key}")


def test_segmentation_mask_returns_to_each_original_size():
    serving = _serving("segmentation")
    size = serving.image_size  # 32: an image of 16x32 (h, w) fills rows 8..23 of the letterbox
    classes = np.tile(np.arange(size)[:, None] % 6, [1, size])  # class = row index mod 6
    probabilities = tf.one_hot(np.stack([classes, classes]), 6)
    found = serving.finish({"probabilities": probabilities}, tf.constant([[16, 32], [64, 64]]))
    mask = found["mask"].numpy()
    assert mask.shape == (2, 64, 64)
    np.testing.assert_array_equal(mask[0, :16, :32], classes[8:24])  # the letterbox window, at scale 1
    assert (mask[0, 16:] == -1).all() and (mask[0, :, 32:] == -1).all()  # beyond the first image's own size
    np.testing.assert_array_equal(mask[1], np.repeat(np.repeat(classes, 2, 0), 2, 1))  # scaled up x2 (nearest)


def test_detection_agreement_needs_the_same_class_at_high_iou():
    task = _serving("detection").task
    pad = {"boxes": np.zeros((1, 2, 4), np.float32), "scores": np.zeros((1, 2), np.float32),
           "classes": np.full((1, 2), -1, np.int32)}
    reference = {"boxes": np.array([[[10, 10, 50, 50], [60, 60, 90, 90], [0, 0, 5, 5]]], np.float32),
                 "scores": np.array([[0.9, 0.8, 0.1]], np.float32), "classes": np.array([[0, 1, 2]], np.int32)}
    other = {"boxes": np.array([[[10, 10, 50, 51], [60, 60, 90, 90], [0, 0, 5, 5]]], np.float32),
             "scores": np.array([[0.85, 0.7, 0.9]], np.float32), "classes": np.array([[0, 2, 2]], np.int32)}
    found = task.agreement(reference, other)
    # shown (score >= 0.25): 2 reference boxes, 3 others. Box 0 matches both ways (IoU 0.976); box 1 has another
    # class; other's [0, 0, 5, 5] finds the reference's only at 0.1, below 0.8 x 0.25: 2 of 5 matched
    assert found == {"matched_boxes": 2 / 5, "boxes_compared": 5.0}
    assert task.agreement(pad, pad)["matched_boxes"] == 1.0  # nothing shown on either side


@pytest.mark.parametrize("task_name", ["classification", "segmentation", "detection"])
def test_saved_model_predicts_what_the_keras_model_does(task_name, tiny_shapes, tmp_path):
    serving = _serving(task_name)
    images = _images(tiny_shapes)
    serving.write_saved_model(str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    found = loaded.signatures["serving_default"](images=tf.constant([image.encoded for image in images]))
    _assert_same(task_name, _reference(serving, images), {k: v.numpy() for k, v in found.items()})
    metadata = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
    assert [name.decode() for name in metadata["class_names"]] == serving.task.class_names
    assert metadata["task"].decode() == task_name and metadata["image_size"] == serving.image_size
    pixels = export.preprocessed(serving, images)[0]
    at_model_size = loaded.signatures["serve_pixels"](images=tf.constant(pixels))
    square = np.full([len(images), 2], serving.image_size)
    expected = {k: v.numpy() for k, v in serving.finish(runners.KerasRunner(serving).core(pixels), square).items()}
    _assert_same(task_name, expected, {k: v.numpy() for k, v in at_model_size.items()})


def test_a_bad_file_sent_to_the_saved_model_is_refused(tmp_path):
    serving = _serving("classification")
    serving.write_saved_model(str(tmp_path / "saved_model"))
    predict_default = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad image file"):
        predict_default(images=tf.constant([b"\xff\xd8\xff\xe0 cut short"]))


def test_a_fresh_process_predicts_with_the_export_alone(tiny_shapes, tmp_path):
    serving = _serving("detection")
    images = _images(tiny_shapes)
    serving.write_saved_model(str(tmp_path / "saved_model"))
    for index, image in enumerate(images):
        (tmp_path / f"{index}.img").write_bytes(image.encoded)
    client = textwrap.dedent(f"""
        import glob, sys
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load({str(tmp_path / "saved_model")!r})
        files = [open(f"{tmp_path}/{{i}}.img", "rb").read() for i in range({len(images)})]
        found = model.signatures["serving_default"](images=tf.constant(files))
        np.savez({str(tmp_path / "found.npz")!r}, **{{k: v.numpy() for k, v in found.items()}})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "datasets", "models")))
    """)
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": ""}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # no module of this repository was imported
    found = dict(np.load(tmp_path / "found.npz", allow_pickle=True))
    _assert_same("detection", _reference(serving, images), found)


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["segmentation", "detection"])
def test_tflite_and_onnx_cores_compute_the_keras_core(task_name, tiny_shapes, tmp_path):
    serving = _serving(task_name)
    pixels = export.preprocessed(serving, _images(tiny_shapes))[0]
    expected = runners.KerasRunner(serving).core(pixels)
    for name in ("tflite_float32", "onnx"):
        path = str(tmp_path / export.FILES[name])
        export.write_format(name, serving, path, [])
        found = runners.open_artifact(path).core(pixels)
        _assert_same(f"{task_name} {name}", expected, found, atol=2e-3 if task_name == "detection" else 1e-4)


@pytest.fixture(scope="module")
def trained_classifier(tiny_shapes, tmp_path_factory) -> str:
    """A small classifier trained for 64 steps at 32 px (val accuracy well above chance)."""
    run = str(tmp_path_factory.mktemp("export") / "run")
    done = run_launch("--dataset=shapes:" + tiny_shapes, "--image_size=32", "--batch_size=32", "--epochs=8",
                      "--preview_batches=0", "--verbose=0", "--strategy=one_device", "--model_dir=" + run)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.slow
def test_export_writes_every_format_checked_against_the_model(trained_classifier):
    # int8 is checked on its own below: this small model's probabilities are too close for int8 top-1 parity
    floats = ["saved_model", "tflite_float32", "tflite_float16", "onnx"]
    done = run_launch("--mode=export", "--model_dir=" + trained_classifier, "--parity_images=32",
                      "--formats=" + ",".join(floats))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = os.path.join(trained_classifier, "export")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    rows = {row["format"]: row for row in report["formats"]}
    assert list(rows) == ["keras", *floats] and not any(row["failed"] for row in rows.values())
    for name in ("saved_model", "tflite_float32", "onnx"):
        assert rows[name]["top1_agreement"] == 1.0 and rows[name]["max_probability_difference"] < 1e-4, name
    assert rows["tflite_float16"]["size_mb"] < 0.6 * rows["tflite_float32"]["size_mb"]
    assert "tflite_float16" in done.stdout and "ms/image" in done.stdout
    assert not re.search(r"^I\d{4} [\d:.]+ +\d+ \w+\.py", done.stdout + done.stderr, re.M)  # no absl INFO lines
    with open(os.path.join(out, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["class_names"] == CLASSES and metadata["image_size"] == 32
    assert sorted(metadata["formats"]) == sorted(floats)
    assert len(os.listdir(os.path.join(out, "samples"))) == export.SAMPLES


@pytest.mark.slow
def test_int8_tflite_is_full_integer_and_calibrated(tiny_shapes, tmp_path):
    serving = _serving("classification")
    images = _images(tiny_shapes)
    path = str(tmp_path / "model_int8.tflite")
    export.write_format("tflite_int8", serving, path, images)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    kernels = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and t["shape"][0] > 1]
    assert kernels and all(t["dtype"] == np.int8 for t in kernels)  # every convolution kernel is int8
    pixels = export.preprocessed(serving, images)[0]
    found = runners.open_artifact(path).core(pixels)["probabilities"]
    expected = runners.KerasRunner(serving).core(pixels)["probabilities"]
    assert np.abs(found - expected).max() < 0.05  # calibrated on these images: close to the float model


@pytest.mark.slow
def test_a_format_outside_its_limits_fails_the_export(trained_classifier, monkeypatch):
    strict = {"max_probability_difference": ("<=", {"float32": -1.0, "float16": -1.0, "int8": -1.0})}
    monkeypatch.setattr(tasks.TASKS["classification"], "parity_limits", strict)
    with pytest.raises(ParityError, match="saved_model: max_probability_difference 0 <= -1.0 expected"):
        export.run(Config(mode="export", model_dir=trained_classifier, formats=["saved_model"], parity_images=8))
    with open(os.path.join(trained_classifier, "export", "report.json")) as f:
        assert json.load(f)["formats"][1]["failed"]


@pytest.mark.slow
def test_predict_writes_outputs_and_names_the_files_it_leaves_out(trained_classifier, tiny_shapes, tmp_path):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    files = sorted(glob.glob(os.path.join(tiny_shapes, "val", "images", "*.jpg")))[:6]
    for path in files:
        (folder / os.path.basename(path)).write_bytes(open(path, "rb").read())
    (folder / "cut.jpg").write_bytes(open(files[0], "rb").read()[:600])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "empty.png").write_bytes(b"")
    outputs = {}
    for name, model in (("keras", "--model_dir=" + trained_classifier),
                        ("tflite", "--export=" + os.path.join(trained_classifier, "export", "model_float32.tflite"))):
        outputs[name] = str(tmp_path / name)
        done = run_launch("--mode=predict", model, "--images=" + str(tmp_path / "photos"),
                          "--output=" + outputs[name])
        assert done.returncode == 0, done.stderr[-3000:]
        assert "6 images" in done.stdout and "2 left out" in done.stdout
        assert "cut.jpg: bad image file" in done.stdout and "empty.png: zero bytes" in done.stdout
    rows = {}
    for name, out in outputs.items():
        with open(os.path.join(out, "predictions.csv")) as f:
            rows[name] = {row["file"]: row["class"] for row in csv.DictReader(f)}
        assert len(os.listdir(os.path.join(out, "drawn"))) == 6
        assert os.path.exists(os.path.join(out, "drawn", "nested__" + os.path.splitext(os.path.basename(files[0]))[0]
                                           + ".jpg"))
    assert rows["keras"] == rows["tflite"] and len(rows["keras"]) == 6
    with open(os.path.join(outputs["keras"], "predictions.json")) as f:
        written = json.load(f)
    assert set(written["left_out"]) == {str(tmp_path / "photos" / "nested" / "cut.jpg"),
                                        str(tmp_path / "photos" / "empty.png")}
    assert sum(written["counts"].values()) == 6


def test_predict_and_export_flags_are_checked(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    for flags, message in ((["--mode=predict", "--model_dir=" + str(tmp_path)], "--images"),
                           (["--mode=predict", "--images=" + str(tmp_path)], "--model_dir"),
                           (["--mode=predict", "--export=" + str(tmp_path / "nothing"), "--images=" + str(tmp_path / "a.png")],
                            "--export="),
                           (["--mode=export", "--model_dir=" + str(tmp_path)], "no config.json"),
                           (["--mode=export", "--formats=tflite,onnx"], "--formats=tflite,onnx: tflite unknown")):
        done = run_launch(*flags)
        assert done.returncode == 2 and message in done.stderr, (flags, done.stderr[-2000:])


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    # small_cnn keeps inputs of 32 px or less at full resolution: the same weight shapes, another stem stride
    trained = tasks.build(Config(image_size=64), CLASSES)
    trained.build_model().save(tmp_path / "best.keras")
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**dataclasses.asdict(Config(image_size=32)), "resolved": {"class_names": CLASSES}}, f)
    with pytest.raises(FlagError, match=r"layer stem_conv: strides \[2, 2\] in the file, \[1, 1\] here"):
        run_dir.trained_model(str(tmp_path))
