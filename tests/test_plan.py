"""The run planned from the data: what the profile measures on written fixtures, each planning rule, explicit
flags honoured with warnings, the plan in config.json and --mode=inspect, and early stopping."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets import profile
from datasets.sources import folder, masks, yolo
from datasets.sources.base import Targets
from engine import job as job_module
from engine import plan
from engine.config import Config, FlagError
from engine.tasks import ClassificationTask, DetectionTask, SegmentationTask
from tests.conftest import run_launch


def _profile(num_train=8000, height=128, width=128, grey=False, smallest=None, name=None, largest=None):
    return profile.Profile(num_train, min(num_train, 256), height, width, grey, smallest, name,
                           largest or max(height, width))


def _write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
    tf.io.write_file(path, encode(image))


def test_profile_measures_size_and_greyness_of_written_images(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for i in range(6):
            grey = rng.integers(0, 256, (20, 24, 1), dtype=np.uint8)
            _write(str(tmp_path / "grey" / label / f"{i}.png"), grey)
            _write(str(tmp_path / "colour" / label / f"{i}.jpg"), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    grey = profile.measure(folder.folder_source(str(tmp_path / "grey"), 0.25, 0).splits["train"])
    assert (grey.num_train, grey.height, grey.width, grey.grey, grey.smallest_object) == (9, 20, 24, True, None)
    colour = profile.measure(folder.folder_source(str(tmp_path / "colour"), 0.25, 0).splits["train"])
    assert (colour.height, colour.width, colour.grey, colour.largest_side) == (30, 40, False, 40)
    (tmp_path / "grey" / "a" / "0.png").write_bytes(b"not an image")  # left out of the sample, named later
    assert profile.measure(folder.folder_source(str(tmp_path / "grey"), 0.25, 0).splits["train"]).sampled == 8


def test_profile_finds_the_smallest_class_of_boxes_and_of_masks(tmp_path):
    # YOLO boxes in 100x200 images: class 0 objects 40 px tall, class 1 objects 10 px on their shorter side
    for split in ("train", "val"):
        for i in range(6):
            _write(str(tmp_path / "yolo" / "images" / split / f"{i}.jpg"), np.full((100, 200, 3), 90, np.uint8))
            label = tmp_path / "yolo" / "labels" / split / f"{i}.txt"
            os.makedirs(label.parent, exist_ok=True)
            label.write_text(f"0 0.3 0.5 0.3 0.4\n1 0.7 0.5 {(10 + i) / 200} 0.5\n")
    source = yolo.yolo_source(str(tmp_path / "yolo"))
    found = profile.measure(source.splits["train"], Targets(max_boxes=2), source.box_class_names)
    assert found.smallest_class == "1"
    assert found.smallest_object == pytest.approx(np.percentile([10, 11, 12, 13, 14, 15], 10) / 200, abs=1e-3)
    # masks 40x60: class 1 covers 20x30 px, class 2 a 4x4 px square
    for i in range(6):
        image = np.full((40, 60, 3), 50 + i, np.uint8)
        mask = np.zeros((40, 60, 1), np.uint8)
        mask[5:25, 10:40] = 1
        mask[30:34, 50:54] = 2
        _write(str(tmp_path / "seg" / "images" / f"{i}.png"), image)
        _write(str(tmp_path / "seg" / "masks" / f"{i}.png"), mask)
    pairs = masks.masks_source(str(tmp_path / "seg"), class_names=["bg", "big", "small"])
    found = profile.measure(pairs.splits["train"], Targets(masks=True), pairs.mask_class_names)
    assert (found.smallest_class, found.smallest_object) == ("small", pytest.approx(4 / 60))


def test_small_datasets_get_a_smaller_batch_and_epochs_that_repeat_the_data():
    run = plan.make(Config(task="detection"), DetectionTask.min_steps, {}, _profile(num_train=205), replicas=1)
    assert run.flags["batch_size"] == 16
    assert (run.steps.steps_per_epoch, run.steps.epochs) == (100, 19)
    assert "the data 8.3 times" in run.reasons["steps"] and not run.warnings
    mirrored = plan.make(Config(task="detection"), DetectionTask.min_steps, {}, _profile(num_train=81), replicas=2)
    assert mirrored.flags["batch_size"] == 8 and mirrored.steps.total_steps >= DetectionTask.min_steps
    large = plan.make(Config(), ClassificationTask.min_steps, {}, _profile(num_train=60000), replicas=1)
    assert (large.flags["batch_size"], large.steps.steps_per_epoch, large.steps.epochs) == (64, 937, 10)
    tuned = plan.make(Config(), ClassificationTask.min_steps, {}, _profile(), replicas=2)
    assert (tuned.flags["batch_size"], tuned.steps.steps_per_epoch, tuned.steps.epochs) == (64, 125, 15)
    fine_tuning = plan.make(Config(init_checkpoint="run_dir"), ClassificationTask.min_steps, {},
                            _profile(num_train=205), 1)
    assert fine_tuning.steps.total_steps == 1000 and fine_tuning.steps.total_steps < run.steps.total_steps
    # With gradient accumulation the plan counts optimizer updates: four batches make one.
    plain, accumulating = (plan.make(Config(grad_accum_steps=k), ClassificationTask.min_steps, {},
                                     _profile(num_train=6400), 1) for k in (1, 4))
    assert (plain.steps.total_steps, accumulating.steps.total_steps) == (19 * 100, 75 * 100)


def test_warmup_is_short_for_small_classifiers_an_epoch_elsewhere_and_the_flag_wins():
    assert ClassificationTask.with_defaults(Config()).warmup_epochs == 0.2
    assert ClassificationTask.with_defaults(Config(model="resnet50")).warmup_epochs == 1.0
    assert ClassificationTask.with_defaults(Config(warmup_epochs=0.0)).warmup_epochs == 0.0
    for task, name in ((SegmentationTask, "segmentation"), (DetectionTask, "detection")):
        assert task.with_defaults(Config(task=name)).warmup_epochs == 1.0


def test_tiny_grey_images_keep_their_size_mild_crops_and_no_colour_jitter():
    planned = ClassificationTask.planned(Config(model="resnet50"), _profile(height=28, width=28, grey=True))
    assert {key: value for key, (value, _) in planned.items()} == {
        "image_size": 28, "min_crop_area": 0.85, "color_jitter": 0.0, "hue": 0.0, "ema_decay": 0.99}
    small_model = ClassificationTask.planned(Config(), _profile(height=28, width=28, grey=True))  # no crops
    assert "min_crop_area" not in small_model and ClassificationTask.defaults("small_cnn")["min_crop_area"] == 1.0
    photos = ClassificationTask.planned(Config(), _profile(height=375, width=500))
    assert {key: value for key, (value, _) in photos.items()} == {"image_size": 64, "ema_decay": 0.99}


def test_planned_weight_averaging_is_dropped_from_runs_too_short_for_it():
    fashion = _profile(num_train=60000, height=28, width=28, grey=True)
    planned = ClassificationTask.planned(Config(), fashion)
    long_run = plan.make(Config(), ClassificationTask.min_steps, planned, fashion, replicas=1)
    assert long_run.flags["ema_decay"] == 0.99 and "~100 optimizer updates" in long_run.reasons["ema_decay"]
    short_run = plan.make(Config(epochs=1), ClassificationTask.min_steps, planned, fashion, replicas=1)
    assert short_run.flags["ema_decay"] == 0.0 and "937 optimizer updates" in short_run.reasons["ema_decay"]
    accumulating = plan.make(Config(epochs=2, grad_accum_steps=2), ClassificationTask.min_steps, planned, fashion, 1)
    assert accumulating.flags["ema_decay"] == 0.0, "937 updates of two batches each"
    given = plan.make(Config(epochs=1, ema_decay=0.9), ClassificationTask.min_steps, planned, fashion, 1)
    assert "ema_decay" not in given.flags, "an explicit --ema_decay is the user's"
    detection = DetectionTask.with_defaults(Config(task="detection"))
    assert detection.ema_decay == 0.0


def test_dct_scaled_decoding_is_planned_only_where_an_image_is_twice_the_input():
    small, large = _profile(height=400, width=400), _profile(height=400, width=400, largest=900)
    assert plan.dct_decode(small, 224)[0] is False and plan.dct_decode(large, 224)[0] is True
    assert plan.make(Config(image_size=224), 1875, {}, small, 1).flags["dct_decode"] is False
    assert "dct_decode" not in plan.make(Config(image_size=224, dct_decode=True), 1875, {}, small, 1).flags
    # training decodes at full scale only; evaluation and serving keep every DCT scale for unknown photos
    task = ClassificationTask(Config(image_size=32, dct_decode=False), ["a", "b"])
    assert task.recipe(training=True).dct_ratios == () and task.recipe(training=False).dct_ratios == (2, 4, 8)


def test_epochs_are_whole_executions_of_steps_per_execution():
    planned, why = plan.steps(8000, 64, None, 0, 1875, steps_per_execution=4)
    assert planned.steps_per_epoch == 124 and "whole executions of --steps_per_execution=4" in why
    assert plan.steps(8000, 64, 3, 0, 1875, steps_per_execution=5)[0] == plan.StepPlan(125, 3), "125 is whole"
    assert plan.steps(200, 64, 2, 0, 1875, steps_per_execution=8)[0].steps_per_epoch == 8, "at least one execution"


def test_small_objects_set_the_input_size_and_limit_zoom_and_mosaic():
    bccd = DetectionTask.planned(Config(task="detection"), _profile(205, 480, 640, smallest=0.0453, name="Platelets"))
    assert bccd["image_size"][0] == 352 and "Platelets" in bccd["image_size"][1] and "mosaic" not in bccd
    shapes = DetectionTask.planned(Config(task="detection"), _profile(smallest=0.125, name="triangle"))
    assert shapes["image_size"][0] == 128 and len(shapes) == 1
    # objects 0.5% of 4000 px photos would want 3200 px: capped at 640 they are 3 px, so no zoom-out nor Mosaic
    tiny = DetectionTask.planned(Config(task="detection"), _profile(100, 3000, 4000, smallest=0.005, name="bird"))
    assert tiny["image_size"][0] == 640 and "capped by the budget" in tiny["image_size"][1]
    assert tiny["min_scale"][0] == 1.0 and tiny["mosaic"][0] == 0.0
    camvid = SegmentationTask.planned(Config(task="segmentation"), _profile(81, 360, 480, smallest=0.0234, name="ped"))
    assert camvid["image_size"][0] == 256
    small_images = SegmentationTask.planned(Config(task="segmentation"), _profile(50, 40, 60, smallest=0.01))
    assert small_images["image_size"][0] == 64, "never above the images' own size (rounded up to the stride)"


def test_explicit_flags_are_honoured_and_warned_about_when_far_from_the_data():
    config = Config(task="detection", image_size=64, batch_size=32, epochs=1)
    planned = DetectionTask.planned(config, _profile(205, 480, 640, smallest=0.0453, name="Platelets"))
    run = plan.make(config, DetectionTask.min_steps, planned, _profile(205, 480, 640, 0.0453, "Platelets"), 1)
    assert "image_size" not in run.flags and "batch_size" not in run.flags
    assert (run.steps.steps_per_epoch, run.steps.epochs) == (6, 1)
    assert any("--image_size=64 is under half the 352" in warning for warning in run.warnings)
    assert any("6 optimizer steps" in warning and "~1875" in warning for warning in run.warnings)
    assert "mosaic" in run.flags, "what the data asks of the flags left unset still applies at the given size"


@pytest.mark.parametrize("flags, message", [({"image_size": 0}, "--image_size=0 must be at least 8"),
                                            ({"batch_size": 0}, "--batch_size=0 must be at least 1"),
                                            ({"epochs": 0}, "--epochs=0 must be at least 1"),
                                            ({"min_crop_area": 1.5}, "--min_crop_area=1.5 must be in")])
def test_planned_flags_are_checked_like_the_others(flags, message):
    with pytest.raises(FlagError, match=message):
        Config(**flags)


def test_one_class_folder_says_classification_needs_two(tmp_path):
    for i in range(4):
        _write(str(tmp_path / "only" / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    source = folder.folder_source(str(tmp_path), 0.25, 0)
    with pytest.raises(FlagError, match="needs at least two classes; --dataset=folder:X has 1: only"):
        ClassificationTask.class_names_of(source, Config(dataset="folder:X"))


def test_the_plan_is_printed_and_written_to_config_json(tiny_shapes, tmp_path, capsys):
    job = job_module.prepare(Config(dataset=f"shapes:{tiny_shapes}", mode="train", model_dir=str(tmp_path),
                                    epochs=1))
    printed = capsys.readouterr().out
    assert "[plan] image_size 64: images 64x64 (median): their own size" in printed
    assert "[plan] batch_size 32: 256 training examples: 8 steps a pass (halved from 64 to reach 8)" in printed
    assert "[plan] warning: 8 optimizer steps (--epochs=1 passes of 8 steps)" in printed
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert (saved["image_size"], saved["batch_size"], saved["epochs"]) == (64, 32, 1)
    assert saved["resolved"]["plan"]["flags"] == {"image_size": 64, "batch_size": 32, "ema_decay": 0.0,
                                                  "cache": "memory", "dct_decode": False}
    assert "[plan] dct_decode False: the largest sampled image, 64 px, is under twice the input size 64" in printed
    assert saved["ema_decay"] == 0.0 and "[plan] ema_decay 0.0: 8 optimizer updates, under the 1000" in printed
    assert saved["cache"] == "memory" and "[plan] cache memory: 320 images decoded at up to 73 px take up to 5 MB" in printed
    assert job.steps.total_steps == 8 and job.config.image_size == 64


def test_cache_auto_keeps_decoded_files_in_memory_when_they_fit(monkeypatch):
    monkeypatch.setattr(plan, "physical_memory_bytes", lambda: 8 << 30)  # a budget of 2048 MB
    config = Config(image_size=224)
    assert plan.cache(config, 10_000, False, False) == (
        "memory", "10000 images decoded at up to 256 px take up to 1875 MB, within the budget of 2048 MB (25% of "
        "memory)")
    assert plan.cache(config, 11_000, False, False)[0] == "none"
    assert plan.cache(config, 10_000, False, masks=True)[0] == "none"  # a mask byte per pixel more
    assert plan.cache(config, 10, True, False) == ("none", "the images are decoded pixels in memory already")


def test_explicit_cache_is_not_planned(tiny_shapes, tmp_path):
    config, run_plan = job_module.plan_run(Config(dataset=f"shapes:{tiny_shapes}", cache="none"),
                                           job_module.source_of(Config(dataset=f"shapes:{tiny_shapes}")), 1)
    assert config.cache == "none" and "cache" not in run_plan.flags


@pytest.mark.slow
def test_inspect_prints_the_plan_and_patience_stops_a_run_that_does_not_improve(tiny_shapes, tmp_path):
    report = run_launch(f"--dataset=shapes:{tiny_shapes}", "--task=detection", "--mode=inspect",
                        f"--model_dir={tmp_path / 'inspect'}")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "[plan] image_size 64" in report.stdout and "[plan] 19 epochs x 100 steps" in report.stdout
    with open(tmp_path / "inspect" / "inspect.json") as f:
        assert json.load(f)["plan"]["steps_per_epoch"] == 100
    # Patience 1: the run ends after the first validated epoch that brings no new best (with a learning rate of 0
    # that is almost surely the second); the history says which epoch that must be.
    model_dir = str(tmp_path / "patience")
    command = (f"--dataset=shapes:{tiny_shapes}", "--strategy=one_device", "--image_size=32", "--epochs=6",
               "--learning_rate=0", "--warmup_epochs=0", "--patience=1", "--preview_batches=0", "--verbose=2",
               f"--model_dir={model_dir}")
    result = run_launch(*command)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(model_dir, "history.csv")) as f:
        accuracy = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    first_without_best = next((e for e in range(1, 6) if accuracy[e] <= max(accuracy[:e])), None)
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    if first_without_best is None:
        assert len(accuracy) == 6 and summary["stopped_early"] is None
    else:
        assert len(accuracy) == first_without_best + 1
        assert summary["stopped_early"] == f"after epoch {first_without_best + 1}: no new best val_accuracy in 1 epochs"
    assert os.path.exists(os.path.join(model_dir, "best.keras"))
    # The same command again (a scheduler's restart): the backup records the stop, so nothing trains further.
    again = run_launch(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    with open(os.path.join(model_dir, "history.csv")) as f:
        assert len(list(csv.DictReader(f))) == len(accuracy)
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert json.load(f)["stopped_early"] == summary["stopped_early"]
    if first_without_best is not None:
        assert f"[resume] early stopping ended training after epoch {first_without_best + 1}" in again.stdout
