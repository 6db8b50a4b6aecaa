"""Segmentation: mIoU against a hand-computed confusion matrix, the loss over labelled pixels, the masks:DIR
source and its errors, an end-to-end run, and CamVid when ../shared is there."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets import pipeline
from datasets.recipes import Augment, SegmentationRecipe
from datasets.sources import masks
from datasets.sources import shapes
from datasets.sources.base import DataError, Targets
from engine import segmentation_metrics, tasks
from engine.config import Config
from tests.conftest import SHARED_DATA, run_launch

CAMVID = os.path.join(SHARED_DATA, "camvid-segnet-val", "CamVid")
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]


def _task(num_classes=3, ignore_value=255, dice_weight=0.0):
    return tasks.build(Config(task="segmentation", model="unet", ignore_value=ignore_value, dice_weight=dice_weight),
                       [f"c{i}" for i in range(num_classes)])


def test_mean_iou_matches_a_hand_computed_confusion_matrix_with_ignored_pixels_and_padding():
    task = _task()
    mask = np.array([[[0, 0, 1, 255],
                      [1, 2, 2, 255]],
                     [[2, 2, 2, 2],
                      [2, 2, 2, 2]]], np.uint8)[..., None]  # example 2 is evaluation padding (weight 0)
    predicted = np.array([[[0, 1, 1, 2],
                           [1, 2, 0, 0]],
                          [[0, 0, 0, 0],
                           [0, 0, 0, 0]]])
    logits = tf.one_hot(predicted, 3) * 5.0
    _, packed = task.model_io({"image": tf.zeros([2, 2, 4, 3], tf.uint8), "mask": tf.constant(mask),
                               "weight": tf.constant([1.0, 0.0])})
    metric = segmentation_metrics.ConfusionMatrix(3, ["c0", "c1", "c2"])
    metric.update_state(packed, logits)
    # counted pixels of example 1 (label -> prediction): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0
    # class 0: tp 1, union 1 + 1 + 1 = 3; class 1: tp 2, union 3; class 2: tp 1, union 2
    np.testing.assert_allclose(metric.total.numpy(), [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert float(metric.result()) == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))
    details = metric.details()
    assert details["iou_c0"] == pytest.approx(1 / 3) and details["iou_c2"] == pytest.approx(1 / 2)
    assert details["pixel_accuracy"] == pytest.approx(4 / 6)
    metric.reset_state()
    assert float(np.sum(metric.total.numpy())) == 0.0


def test_loss_counts_only_labelled_pixels_and_classes_absent_from_miou():
    task = _task()
    mask = tf.constant(np.array([[[0, 255], [1, 255]]], np.uint8)[..., None])
    _, packed = task.model_io({"image": tf.zeros([1, 2, 2, 3], tf.uint8), "mask": mask})
    logits = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype(np.float32)
    changed = logits.copy()
    changed[0, :, 1] += 100.0  # only ignored pixels change
    loss = task.compile_args()["loss"]
    assert float(loss(packed, logits)) == pytest.approx(float(loss(packed, changed)), rel=1e-6)
    metric = segmentation_metrics.ConfusionMatrix(3, ["c0", "c1", "c2"])
    metric.update_state(packed, tf.one_hot([[[0, 2], [1, 2]]], 3))
    assert float(metric.result()) == 1.0 and np.isnan(metric.details()["iou_c2"])
    dice = _task(dice_weight=1.0).compile_args()["loss"]
    assert float(dice(packed, logits)) > float(loss(packed, logits))


def _write_pairs(directory, count=6, size=(24, 32), bad_value=None):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(directory, "images"))
    os.makedirs(os.path.join(directory, "masks"))
    for i in range(count):
        image = rng.integers(0, 255, (*size, 3), np.uint8)
        mask = rng.integers(0, 3, (*size, 1)).astype(np.uint8)
        mask[0, 0, 0] = 255
        if bad_value is not None and i == 2:
            mask[1, 1, 0] = bad_value
        tf.io.write_file(os.path.join(directory, "images", f"p{i}.jpg"), tf.io.encode_jpeg(image))
        tf.io.write_file(os.path.join(directory, "masks", f"p{i}.png"), tf.io.encode_png(mask))
    with open(os.path.join(directory, "classes.txt"), "w") as f:
        f.write("sky\nroad\ncar\n")


def _batches(source, split="train", training=False, size=32, batch=2, ignore=255, take=3):
    recipe = SegmentationRecipe(size, Augment(scale=(0.8, 1.2)) if training else Augment(), ignore,
                                len(source.mask_class_names))
    config = pipeline.PipelineConfig(recipe, global_batch_size=batch, training=training)
    return list(pipeline.build_dataset(source.splits[split], config).take(take).as_numpy_iterator())


def test_masks_folder_pairs_by_stem_splits_by_fraction_and_letterboxes_masks(tmp_path):
    _write_pairs(str(tmp_path))
    source = masks.masks_source(str(tmp_path), val_fraction=0.34, seed=0)
    assert source.mask_class_names == ["sky", "road", "car"]
    assert (len(source.splits["train"]), len(source.splits["val"])) == (4, 2)
    for split in ("train", "val"):
        examples = source.splits[split]
        assert [os.path.basename(p)[:-4] for p in examples.paths] == \
            [os.path.basename(p)[:-4] for p in examples.mask_paths]
    batch = _batches(source, "val")[0]
    mask = batch["mask"][0, ..., 0]
    assert batch["mask"].shape == (2, 32, 32, 1)
    assert np.all(mask[:4] == 255) and np.all(mask[-4:] == 255)  # 24x32 letterboxed: 4 rows of padding
    assert set(np.unique(mask[4:-4])) <= {0, 1, 2, 255}
    assert _batches(source, training=True)[0]["mask"].shape == (2, 32, 32, 1)


def test_masks_folder_errors_name_the_files(tmp_path):
    _write_pairs(str(tmp_path / "a"))
    os.remove(str(tmp_path / "a" / "masks" / "p3.png"))
    with pytest.raises(DataError, match="p3.jpg"):
        masks.masks_source(str(tmp_path / "a"))
    source = masks.masks_source(str(tmp_path / "a"), skip_unmatched=True)
    assert len(source.splits["train"]) + len(source.splits["val"]) == 5
    assert source.notes["images_without_masks"][0].endswith("p3.jpg")
    os.remove(str(tmp_path / "a" / "classes.txt"))
    with pytest.raises(DataError, match="--mask_classes"):
        masks.masks_source(str(tmp_path / "a"))
    _write_pairs(str(tmp_path / "b"), bad_value=7)
    bad = masks.masks_source(str(tmp_path / "b"), val_fraction=0.5)
    split = "train" if any("p2" in p for p in bad.splits["train"].paths) else "val"
    with pytest.raises(tf.errors.InvalidArgumentError, match="p2.png"):
        _batches(bad, split, batch=1)
    _write_pairs(str(tmp_path / "c"))
    small = np.zeros((10, 10, 1), np.uint8)
    tf.io.write_file(str(tmp_path / "c" / "masks" / "p1.png"), tf.io.encode_png(small))
    wrong = masks.masks_source(str(tmp_path / "c"), val_fraction=0.5)
    split = "train" if any("p1" in p for p in wrong.splits["train"].paths) else "val"
    with pytest.raises(tf.errors.InvalidArgumentError, match="mask size differs.*p1.jpg"):
        _batches(wrong, split, batch=1)


@pytest.mark.slow
def test_segmentation_run_writes_miou_per_class_iou_and_overlays(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "seg")
    result = run_launch("--task=segmentation", f"--dataset=shapes:{tiny_shapes}", "--strategy=mirrored",
                        "--image_size=32", "--batch_size=32", "--epochs=2", "--verbose=2", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["best_metric"] == "val_mean_iou"
    assert set(summary["val_per_class_iou"]) == {"background", "circle", "square", "triangle", "star", "cross"}
    # mean IoU is the mean over the classes that occur (the others' IoU is NaN), from the same confusion matrix
    assert summary["val_mean_iou"] == pytest.approx(np.nanmean(list(summary["val_per_class_iou"].values())), abs=1e-5)
    with open(os.path.join(model_dir, "history.csv")) as f:
        history = [float(row["val_mean_iou"]) for row in csv.DictReader(f)]
    assert len(history) == 2 and summary["val_mean_iou"] == pytest.approx(history[-1], abs=1e-6)
    picture = tf.io.decode_png(tf.io.read_file(os.path.join(model_dir, "overlays", "val.png")))
    cell = (picture.shape[0] - 6) / 4  # 8 pairs of 32 px images enlarged 4x, each above a legend of its classes
    assert picture.shape[1:] == (2 * 256 + 2, 3) and cell == int(cell) and cell > 128
    evaluation = run_launch("--task=segmentation", f"--dataset=shapes:{tiny_shapes}", "--mode=eval",
                            "--strategy=mirrored", "--image_size=32", "--batch_size=32", f"--model_dir={model_dir}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "per-class IoU" in evaluation.stdout and "background" in evaluation.stdout
    # Evaluation under mirrored on CPU is not bit-reproducible (two replicas share oneDNN's threads): two passes
    # over the same weights of this near-untrained model differed by up to 7e-4 mean IoU here.
    with open(os.path.join(model_dir, "eval.json")) as f:
        assert json.load(f)["val_mean_iou"] == pytest.approx(max(history), abs=3e-3), "eval scores best.keras"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(CAMVID), reason="../shared/data/camvid-segnet-val is absent")
def test_camvid_trains_above_the_majority_class_baseline(tmp_path):
    source = masks.masks_source(CAMVID, "val", "valannot", CAMVID_CLASSES, val_fraction=0.2, seed=0)
    assert (len(source.splits["train"]), len(source.splits["val"])) == (81, 20)
    model_dir = str(tmp_path / "camvid")
    result = run_launch("--task=segmentation", f"--dataset=masks:{CAMVID}", "--mask_dirs=val,valannot",
                        f"--mask_classes={','.join(CAMVID_CLASSES)}", "--ignore_value=11", "--image_size=128",
                        "--batch_size=8", "--epochs=8", "--learning_rate=3e-3", "--preview_batches=1",
                        "--verbose=2", f"--model_dir={model_dir}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    # Majority-class baseline: predicting the most frequent class everywhere scores IoU = its pixel share on
    # that class and 0 on every other class present, so mean IoU = share / classes present.
    val = _batches(source, "val", size=128, batch=4, ignore=11, take=5)  # all 20 validation images
    labels = np.concatenate([b["mask"].ravel() for b in val])
    counts = np.bincount(labels[labels < 11], minlength=11)
    baseline = counts.max() / counts.sum() / np.count_nonzero(counts)
    print(f"CamVid val_mean_iou {summary['val_mean_iou']:.3f} (majority-class baseline {baseline:.3f}), "
          f"pixel accuracy {summary['val_pixel_accuracy']:.3f}")
    assert summary["val_mean_iou"] > baseline


def test_tfrecord_conversion_keeps_each_mask_with_its_image(tiny_shapes, tmp_path):
    from datasets.sources import tfrecord

    source = shapes.shapes_source(tiny_shapes)
    metadata = tfrecord.convert(source, str(tmp_path / "shards"), num_shards=4)
    assert "image/segmentation/class/encoded" in metadata["feature_keys"]
    converted = tfrecord.tfrecord_source(str(tmp_path / "shards"))
    assert converted.mask_class_names == source.mask_class_names
    records = converted.splits["val"].records(tf.distribute.InputContext(), 0, False, Targets(masks=True))
    seen = 0
    for record in records.as_numpy_iterator():
        path = record["id"].decode()
        original = tf.io.decode_png(tf.io.read_file(path.replace("/images/", "/masks/").replace(".jpg", ".png")))
        np.testing.assert_array_equal(tf.io.decode_png(record["mask_encoded"]).numpy(), original.numpy())
        seen += 1
    assert seen == 64
    batch = _batches(converted, "val", size=32, batch=8)[0]
    assert batch["mask"].shape == (8, 32, 32, 1) and batch["mask"].max() <= 5


def test_polygon_rasterising_fills_pixel_centres_inside():
    from datasets.sources import polygons

    square = polygons.rasterise([(3, np.array([[1, 1], [4, 1], [4, 3], [1, 3]]))], 5, 6)
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 3
    np.testing.assert_array_equal(square, expected)
    triangle = polygons.rasterise([(1, np.array([[0, 0], [8, 0], [0, 8]]))], 8, 8)
    assert triangle.sum() == 28  # pixel centres with x + y < 8: 7 + 6 + ... + 1


def _image(path, height=20, width=30):
    tf.io.write_file(path, tf.io.encode_jpeg(np.full((height, width, 3), 128, np.uint8)))


def test_labelme_polygons_and_rectangles_become_class_masks(tmp_path):
    for i in range(3):
        _image(str(tmp_path / f"im{i}.jpg"))
        shapes = [{"label": "cat", "points": [[2, 2], [12, 2], [12, 10], [2, 10]], "shape_type": "polygon"},
                  {"label": "dog", "points": [[20, 5], [28, 15]], "shape_type": "rectangle"}]
        with open(tmp_path / f"im{i}.json", "w") as f:
            json.dump({"imagePath": f"im{i}.jpg", "imageHeight": 20, "imageWidth": 30, "shapes": shapes}, f)
    from datasets.sources import polygons

    source = polygons.labelme_source(str(tmp_path), str(tmp_path / "cache"), val_fraction=0.34)
    assert source.mask_class_names == ["background", "cat", "dog"]
    mask = tf.io.decode_png(tf.io.read_file(source.splits["train"].mask_paths[0])).numpy()[..., 0]
    assert np.all(mask[2:10, 2:12] == 1) and np.all(mask[5:15, 20:28] == 2) and mask.sum() == 80 + 2 * 80
    masks = _batches(source, "train", size=32)[0]["mask"]
    assert masks[masks != 255].max() == 2
    with open(tmp_path / "classes.txt", "w") as f:
        f.write("cat\n")
    with pytest.raises(DataError, match=r"im0.json: labels \['dog'\]"):
        polygons.labelme_source(str(tmp_path), str(tmp_path / "cache"))
    os.remove(tmp_path / "classes.txt")
    os.remove(tmp_path / "im1.jpg")
    with pytest.raises(DataError, match="im1.json: its image .*im1.jpg does not exist"):
        polygons.labelme_source(str(tmp_path), str(tmp_path / "cache"))


def test_coco_polygons_and_rle_become_class_masks(tmp_path):
    from pycocotools import mask as coco_mask

    from datasets.sources import polygons

    blob = np.zeros((20, 30), np.uint8, order="F")
    blob[12:18, 3:9] = 1
    rle = coco_mask.encode(np.asfortranarray(blob))
    rle["counts"] = rle["counts"].decode()
    images, annotations = [], []
    for i in range(3):
        _image(str(tmp_path / f"c{i}.jpg"))
        images.append({"id": i + 1, "file_name": f"c{i}.jpg", "height": 20, "width": 30})
        annotations.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 7, "iscrowd": 0, "area": 80,
                            "bbox": [2, 2, 10, 8], "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]})
        annotations.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 3, "iscrowd": 1, "area": 36,
                            "bbox": [3, 12, 6, 6], "segmentation": rle})
    path = tmp_path / "instances.json"
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 3, "name": "blob"}, {"id": 7, "name": "box"}]}, f)
    source = polygons.coco_source(str(path), str(tmp_path / "cache"), val_fraction=0.34)
    assert source.mask_class_names == ["background", "blob", "box"]
    mask = tf.io.decode_png(tf.io.read_file(source.splits["val"].mask_paths[0])).numpy()[..., 0]
    assert np.all(mask[12:18, 3:9] == 1) and np.all(mask[3:10, 3:12] == 2) and (mask == 0).sum() > 400
    os.remove(tmp_path / "c2.jpg")
    with pytest.raises(DataError, match="c2.jpg"):
        polygons.coco_source(str(path), str(tmp_path / "cache2"))
