"""Detection: COCO mAP against pycocotools on exported JSON, boxes mapped back through the letterbox, and a
YOLOv8 run end to end under MirroredStrategy."""

import contextlib
import csv
import io
import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets.ops import spatial
from engine import detection_metrics
from tests.conftest import SHARED_DATA, run_launch

# Four images: two objects found (one at IoU 0.87), a wrong-class box, a box on an image without objects,
# an object missed, and an image with neither objects nor detections.
TRUTH = [
    {"file_name": "one.jpg", "height": 100, "width": 100, "boxes": [[10, 10, 50, 50], [60, 60, 90, 90]],
     "classes": [0, 1]},
    {"file_name": "two.jpg", "height": 100, "width": 100, "boxes": np.zeros((0, 4)), "classes": []},
    {"file_name": "three.jpg", "height": 80, "width": 120, "boxes": [[20, 20, 60, 60]], "classes": [0]},
    {"file_name": "four.jpg", "height": 100, "width": 100, "boxes": np.zeros((0, 4)), "classes": []},
]
FOUND = [
    {"boxes": [[10, 10, 50, 50], [60, 60, 90, 90], [62, 62, 90, 90]], "scores": [0.9, 0.8, 0.7], "classes": [0, 0, 1]},
    {"boxes": [[0, 0, 20, 20]], "scores": [0.95], "classes": [0]},
    {"boxes": np.zeros((0, 4)), "scores": [], "classes": []},
    {"boxes": np.zeros((0, 4)), "scores": [], "classes": []},
]
# By hand: class a ranks FP 0.95, TP 0.9, FP 0.8 over 2 objects: precision 0.5 up to recall 0.5, then none;
# COCO's 101 recall points give 51 x 0.5 / 101. Class b: one match at IoU 28^2/30^2 = 0.871, so AP 1 at IoU
# 0.5 and 8 of the 10 thresholds 0.5:0.95. Best F1 over all: the 0.7 detection, precision 2/4, recall 2/3.
AP50_A = 51 * 0.5 / 101


def _pycocotools(ground_truth: str, detections: str):
    """pycocotools' own bbox evaluation of two exported JSON files."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(ground_truth)
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation
EXPECTED_MAP50 = (AP50_A + 1.0) / 2
EXPECTED_MAP50_95 = (AP50_A + 0.8) / 2


def test_map_equals_pycocotools_on_the_exported_json_and_a_hand_computed_value(tmp_path):
    ground_truth = detection_metrics.coco_ground_truth(TRUTH, ["a", "b"])
    results = detection_metrics.coco_results(FOUND)
    ours = detection_metrics.coco_map(ground_truth, results)
    detection_metrics.write_coco_json(str(tmp_path), ground_truth, results)
    evaluation = _pycocotools(str(tmp_path / "val_ground_truth.json"), str(tmp_path / "val_detections.json"))
    assert round(ours["map50"], 4) == round(evaluation.stats[1], 4)
    assert round(ours["map50_95"], 4) == round(evaluation.stats[0], 4)
    assert ours["map50"] == pytest.approx(EXPECTED_MAP50, abs=1e-6)
    assert ours["map50_95"] == pytest.approx(EXPECTED_MAP50_95, abs=1e-6)
    assert ours["per_class_ap50"] == pytest.approx({"a": AP50_A, "b": 1.0}, abs=1e-6)
    assert (ours["precision"], ours["recall"], ours["confidence"]) == pytest.approx((0.5, 2 / 3, 0.7), abs=1e-6)
    with open(tmp_path / "val_ground_truth.json") as f:
        images = json.load(f)["images"]
    assert [image["file_name"] for image in images] == ["one.jpg", "two.jpg", "three.jpg", "four.jpg"]


def test_no_detections_at_all_score_zero_for_every_class_with_objects():
    ground_truth = detection_metrics.coco_ground_truth(TRUTH, ["a", "b", "c"])
    scores = detection_metrics.coco_map(ground_truth, [])
    assert scores["map50"] == 0.0 and scores["per_class_ap50"] == {"a": 0.0, "b": 0.0}


@pytest.mark.parametrize("height,width", [(100, 200), (300, 120), (64, 64)])
def test_boxes_map_back_from_the_letterbox_to_the_original_image(height, width):
    boxes = np.array([[3.0, 5.0, 40.0, 60.0], [0.0, 0.0, width, height]], np.float32)
    example = {"image": tf.zeros([height, width, 3], tf.uint8), "boxes": tf.constant(boxes),
               "classes": tf.constant([0, 1])}
    boxed = spatial.letterbox(96, 255)(example)
    assert boxed["original_size"].numpy().tolist() == [height, width]
    back = spatial.unletterbox_boxes(boxed["boxes"], boxed["original_size"], 96)
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    batched = spatial.unletterbox_boxes(tf.stack([boxed["boxes"]] * 2), tf.stack([boxed["original_size"]] * 2), 96)
    np.testing.assert_allclose(batched, [boxes, boxes], atol=1e-3)


@pytest.fixture(scope="module")
def detection_run(tiny_shapes, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("runs") / "detection")
    result = run_launch("--task=detection", f"--dataset=shapes:{tiny_shapes}", "--strategy=mirrored",
                        "--image_size=64", "--batch_size=32", "--epochs=2", "--verbose=2", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


@pytest.mark.slow
def test_detection_run_logs_map_picks_best_by_it_and_draws_and_exports(detection_run):
    from tensorboard.backend.event_processing import event_accumulator

    model_dir = detection_run
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["best_metric"] == "val_map50"
    assert set(summary["val_per_class_ap50"]) == {"circle", "square", "triangle", "star", "cross"}
    with open(os.path.join(model_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["val_map50"] != "" and row["val_map50_95"] != "" for row in rows)
    assert summary["best_value"] == pytest.approx(max(float(row["val_map50"]) for row in rows))
    accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, "tensorboard", "validation"),
                                                     size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    assert {"epoch_map50", "epoch_map50_95", "epoch_recall"} <= set(accumulator.Tags()["tensors"])
    picture = tf.io.decode_png(tf.io.read_file(os.path.join(model_dir, "overlays", "val.png")))
    assert picture.shape == (4 * 128 + 6, 2 * 256 + 2, 3)
    with open(os.path.join(model_dir, "val_ground_truth.json")) as f:
        truth = json.load(f)
    with open(os.path.join(model_dir, "val_detections.json")) as f:
        found = json.load(f)
    assert len(truth["images"]) == 64 and {a["image_id"] for a in found} <= {i["id"] for i in truth["images"]}
    assert os.path.exists(os.path.join(model_dir, "best.keras"))
    # The last epoch's mAP is pycocotools' own on the exported files
    evaluation = _pycocotools(os.path.join(model_dir, "val_ground_truth.json"),
                              os.path.join(model_dir, "val_detections.json"))
    assert round(summary["val_map50"], 4) == round(float(rows[-1]["val_map50"]), 4) == round(evaluation.stats[1], 4)


@pytest.mark.slow
def test_detection_eval_mode_prints_per_class_ap(tiny_shapes, detection_run):
    result = run_launch("--task=detection", f"--dataset=shapes:{tiny_shapes}", "--mode=eval", "--image_size=64",
                        "--batch_size=32", f"--model_dir={detection_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-class AP50" in result.stdout and "val_map50=" in result.stdout
    with open(os.path.join(detection_run, "eval.json")) as f:
        evaluation = json.load(f)
    with open(os.path.join(detection_run, "history.csv")) as f:
        best = max(float(row["val_map50"]) for row in csv.DictReader(f))
    assert evaluation["weights"].endswith("best.keras")
    assert evaluation["val_map50"] == pytest.approx(best, abs=1e-4), "eval scores best.keras as training did"
    coco = _pycocotools(os.path.join(detection_run, "val_ground_truth.json"),
                        os.path.join(detection_run, "val_detections.json"))
    assert round(evaluation["val_map50"], 4) == round(coco.stats[1], 4), "eval wrote what it scored"


BCCD = os.path.join(SHARED_DATA, "bccd", "BCCD")
COCO8 = os.path.join(SHARED_DATA, "coco8", "data.yaml")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(BCCD), reason="../shared/data/bccd is absent")
def test_bccd_needs_skip_bad_labels_then_trains_and_reports_map50(tmp_path, capsys):
    model_dir = str(tmp_path / "bccd")
    common = ["--task=detection", f"--dataset=voc:{BCCD}", "--image_size=64", "--batch_size=16", "--verbose=2"]
    refused = run_launch(*common, "--epochs=1", f"--model_dir={model_dir}-refused")
    assert refused.returncode == 2 and "--skip_bad_labels" in refused.stderr
    assert "BloodImage_00338.xml" in refused.stderr or "BloodImage_00343.xml" in refused.stderr
    result = run_launch(*common, "--skip_bad_labels", "--epochs=2", "--strategy=mirrored", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["val_per_class_ap50"]) == {"Platelets", "RBC", "WBC"}
    evaluation = _pycocotools(os.path.join(model_dir, "val_ground_truth.json"),
                              os.path.join(model_dir, "val_detections.json"))
    assert round(summary["val_map50"], 4) == round(evaluation.stats[1], 4)
    assert len(evaluation.cocoGt.getImgIds()) == 87, "scored on the whole validation split"
    with capsys.disabled():
        print(f"\nBCCD, 2 epochs of yolov8_n at 64 px (benchmarks/detection_real_data.py trains longer): "
              f"val_map50 {summary['val_map50']:.3f}, per class {summary['val_per_class_ap50']}")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(COCO8), reason="../shared/data/coco8 is absent")
def test_coco8_trains_and_evaluates_with_its_80_names(tmp_path):
    model_dir = str(tmp_path / "coco8")
    result = run_launch("--task=detection", f"--dataset=yolo:{COCO8}", "--image_size=64", "--batch_size=4",
                        "--epochs=2", "--verbose=2", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "val_ground_truth.json")) as f:
        truth = json.load(f)
    assert len(truth["images"]) == 4 and len(truth["categories"]) == 80
    # --mode=eval prints the classes with objects in the validation split (it once failed on the other 70-odd)
    evaluation = run_launch("--task=detection", f"--dataset=yolo:{COCO8}", "--image_size=64", "--batch_size=4",
                            "--mode=eval", f"--model_dir={model_dir}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    after = evaluation.stdout.split("per-class AP50:")[1].splitlines()[1:]
    table = list(itertools.takewhile(lambda line: line.startswith("    "), after))  # the report's lines follow
    names_with_objects = {truth["categories"][a["category_id"] - 1]["name"] for a in truth["annotations"]}
    assert {line.strip().rsplit(" ", 1)[0].strip() for line in table} == names_with_objects


def test_detector_sizes_grow_and_the_head_starts_at_the_prior():
    from models import detection

    counts = [detection.build_detector(name, 3, 64).count_params() for name in detection.SIZES]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    again = detection.build_detector("yolov8_n", 3, 64)
    found = again.decode_predictions(again(np.zeros((2, 64, 64, 3), np.uint8)), np.zeros((2, 64, 64, 3)))
    assert tuple(found["boxes"].shape) == (2, 100, 4)
    # The head starts at Ultralytics' prior (5 objects per image), not 0.5 on every cell: no early flood of
    # confident boxes for non-max suppression and the class loss.
    scores = again(np.zeros((1, 64, 64, 3), np.uint8))["classes"]
    assert float(np.mean(scores)) < 0.1  # 5 objects over the 84 cells of 64 px, 3 classes: mean 0.05
    with pytest.raises(ValueError, match="--image_size=40"):
        detection.build_detector("yolov8_n", 3, 40)
