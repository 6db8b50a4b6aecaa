"""Augmentation: geometry of images, masks and boxes on the generated shapes, soft labels, determinism,
static shapes, RandAugment operations, previews."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from datasets import drawing, pipeline, preview
from datasets.ops import decode, geometry, mixing, randaugment, spatial
from datasets.ops.randaugment import NUM_OPS, operations
from datasets.recipes import Augment, ClassificationRecipe, DetectionRecipe, SegmentationRecipe
from datasets.sources import shapes
from datasets.sources.base import Targets

SIZE = 96
STRONG = {
    "classification": Augment(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, randaugment_ops=2,
                              mixup=0.2, cutmix=1.0, num_classes=5),
    "segmentation": Augment(scale=(0.5, 2.0), brightness=0.3, contrast=0.3, saturation=0.3),
    "detection": Augment(scale=(0.5, 1.5), translate=0.2, mosaic=1.0, box_mixup=0.5, brightness=0.4, saturation=0.7,
                         hue=0.015),
}


def _instances(tiny_shapes, count=8, seed=0):
    """Letterboxed shapes examples whose mask holds instance ids (unique in the batch) and whose box classes
    are those ids - 1; the image shows each instance as the colour (7 x id, 255, 0) on black."""
    split = shapes.shapes_source(tiny_shapes).splits["train"]
    records = split.records(tf.distribute.InputContext(), seed, True, Targets(masks=True, max_boxes=4))
    fit = spatial.letterbox(SIZE, 255)
    examples = [fit(decode.decode_for_size(SIZE)(r)) for r in records.take(count)]
    masks = np.stack([e["mask"].numpy()[..., 0] for e in examples])
    boxes = np.stack([e["boxes"].numpy() for e in examples])
    classes = np.stack([e["classes"].numpy() for e in examples])
    instance = np.where(masks == 255, 255, 0).astype(np.uint8)  # the letterbox padding stays ignored
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for b in range(count):
        for i in range(4):
            if classes[b, i] < 0:
                continue
            x0, y0, x1, y1 = boxes[b, i]
            inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1) & (masks[b] == classes[b, i] + 1)
            instance[b][inside] = b * 4 + i + 1
            classes[b, i] = b * 4 + i
    on_object = (instance > 0) & (instance < 255)
    image = np.stack([np.where(on_object, instance * 7, 0), np.where(on_object, 255, 0), np.zeros_like(instance)],
                     axis=-1).astype(np.uint8)
    seeds = tf.random.experimental.stateless_split([seed, 1], count)
    return {"image": tf.constant(image), "mask": tf.constant(instance[..., None]),
            "boxes": tf.constant(boxes), "classes": tf.constant(classes), "seed": seeds}


CHAINS = {
    "affine": lambda: [spatial.random_affine(SIZE, (0.5, 1.5), True, 255)],
    "mosaic+affine": lambda: [spatial.mosaic(SIZE, 1.0, 255),
                              spatial.random_affine(SIZE, (0.5, 1.5), True, 255, translate=0.2)],
    "zoom_in+half_mosaic": lambda: [spatial.random_affine(SIZE, (1.5, 2.0), True, 255),
                                    spatial.mosaic(SIZE, 0.5, 255)],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("seed", [0, 1])
def test_boxes_enclose_their_objects_and_masks_cover_them(tiny_shapes, chain, seed):
    batch = _instances(tiny_shapes, seed=seed)
    for step in CHAINS[chain]():
        batch = step(batch)
    image, mask = batch["image"].numpy().astype(int), batch["mask"].numpy()[..., 0].astype(int)
    boxes, classes = batch["boxes"].numpy(), batch["classes"].numpy()
    checked = 0
    for b in range(len(image)):
        for box, class_id in zip(boxes[b], classes[b]):
            if class_id < 0:
                continue
            rows, cols = np.nonzero(mask[b] == class_id + 1)
            if len(rows) == 0:
                continue  # too thin to hit a pixel centre after resampling
            found = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            # the box encloses every pixel of its object (a box cut by an edge may be looser than what is left
            # of a round object: boxes are clipped, as in every YOLO pipeline)
            assert np.all(found[:2] >= box[:2] - 2.0) and np.all(found[2:] <= box[2:] + 2.0), (chain, found, box)
            checked += 1
    assert checked >= 8, "the test must see boxes"
    # Images are resampled bilinearly, masks by nearest neighbour: compare where a pixel is mostly object.
    labelled, mostly_object = (mask > 0) & (mask != 255), (image[..., 1] >= 128) & (mask != 255)
    assert mostly_object[labelled].mean() > 0.9, "labelled pixels show an object"
    assert labelled[mostly_object].mean() > 0.9, "object pixels are labelled"
    interior = labelled & (image[..., 1] >= 250)
    assert (np.abs(image[..., 0] - 7 * mask)[interior] <= 3).mean() > 0.97, "each label is its own object's"


def test_padded_boxes_stay_padding_and_degenerate_boxes_are_dropped():
    window = tf.constant([[0.0, 0.0, 64.0, 64.0]])
    boxes = tf.constant([[[20.0, 10.0, 30.0, 20.0], [0.0, 0.0, 0.0, 0.0], [60.0, 50.0, 70.0, 60.0]]])
    moved, kept = geometry.move_boxes(boxes, tf.constant([[1, -1, 2]]), tf.constant([[1.0, 1.0, -29.0, 0.0]]),
                                      window)
    assert kept.numpy().tolist() == [[-1, -1, 2]]  # 1 px wide after clipping; padding stays padding
    np.testing.assert_array_equal(moved.numpy()[0], [[0, 0, 0, 0], [0, 0, 0, 0], [31, 50, 41, 60]])
    boxes = tf.constant([[[0.0, 0.0, 40.0, 40.0], [0.0, 20.0, 10.0, 30.0]]])
    moved, kept = geometry.move_boxes(boxes, tf.constant([[0, 4]]), tf.constant([[1.0, 1.0, 61.0, 0.0]]), window)
    assert kept.numpy().tolist() == [[-1, 4]]  # 3 px of 40 visible (7.5%) is dropped; 3 px of 10 kept
    np.testing.assert_array_equal(moved.numpy()[0, 1], [61, 20, 64, 30])


def test_double_flip_is_identity_and_random_flip_mirrors_exactly(tiny_shapes):
    batch = _instances(tiny_shapes)
    flip = tf.tile(tf.constant([[-1.0, 1.0, SIZE, 0.0]]), [8, 1])
    once = spatial._apply(batch, flip, SIZE, 255)
    back = spatial._apply(once, flip, SIZE, 255)
    for key in ("image", "mask", "boxes", "classes"):
        np.testing.assert_array_equal(back[key].numpy(), batch[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(once["image"].numpy(), batch["image"].numpy()[:, :, ::-1])
    flipped = spatial.random_affine(SIZE, (1.0, 1.0), True, 255)(batch)["image"].numpy()
    mirrored = [np.array_equal(out, src[:, ::-1]) for out, src in zip(flipped, batch["image"].numpy())]
    same = [np.array_equal(out, src) for out, src in zip(flipped, batch["image"].numpy())]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_letterbox_keeps_aspect_and_fills_padding_with_grey_and_ignore():
    example = {"image": tf.fill([40, 80, 3], tf.constant(200, tf.uint8)), "mask": tf.ones([40, 80, 1], tf.uint8),
               "boxes": tf.constant([[0.0, 0.0, 80.0, 40.0], [0.0, 0.0, 0.0, 0.0]]), "classes": tf.constant([3, -1])}
    out = spatial.letterbox(64, ignore=11)(example)
    image, mask = out["image"].numpy(), out["mask"].numpy()[..., 0]
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert np.all(image[:16] == spatial.FILL) and np.all(image[48:] == spatial.FILL) and np.all(image[16:48] == 200)
    assert np.all(mask[:16] == 11) and np.all(mask[48:] == 11) and np.all(mask[16:48] == 1)
    np.testing.assert_allclose(out["boxes"].numpy()[0], [0.0, 16.0, 64.0, 48.0])
    assert out["classes"].numpy().tolist() == [3, -1]


def test_mixup_and_cutmix_labels_sum_to_one_and_cutmix_weighs_the_pasted_area():
    count, size = 8, 32
    images = tf.constant(np.arange(count, dtype=np.uint8)[:, None, None, None] * 10 * np.ones((1, size, size, 3),
                                                                                               np.uint8))
    labels = tf.one_hot(tf.range(count), count)
    cut_images, cut_labels = mixing.cutmix(images, labels, 1.0, tf.constant([3, 4]))
    for b in range(count):
        partner = (b + 1) % count
        pasted = np.mean(cut_images.numpy()[b, ..., 0] == partner * 10)
        assert cut_labels.numpy()[b, partner] == pytest.approx(pasted, abs=1e-6)
    up_images, up_labels = mixing.mixup(images, labels, 0.2, tf.constant([3, 4]))
    weight = up_labels.numpy()[np.arange(count), np.arange(count)]
    expected = weight * np.arange(count) * 10 + (1 - weight) * ((np.arange(count) + 1) % count) * 10
    np.testing.assert_allclose(up_images.numpy()[:, 0, 0, 0], expected, atol=0.51)
    for mixed in (cut_labels, up_labels):
        np.testing.assert_allclose(mixed.numpy().sum(axis=1), 1.0, atol=1e-6)


RECIPES = {"classification": ClassificationRecipe, "segmentation": SegmentationRecipe,
           "detection": lambda size, augment: DetectionRecipe(size, augment, max_boxes=4)}


def _pipeline(split, kind, seed, training=True):
    recipe = RECIPES[kind](48, STRONG[kind] if training else Augment())
    config = pipeline.PipelineConfig(recipe, global_batch_size=8, training=training, seed=seed, deterministic=True)
    return pipeline.build_dataset(split, config)


@pytest.mark.parametrize("kind", sorted(STRONG))
def test_shapes_are_static_and_same_seed_gives_identical_batches(tiny_shapes, kind):
    split = shapes.shapes_source(tiny_shapes).splits["train"]
    for training in (True, False):
        for key, spec in _pipeline(split, kind, 0, training).element_spec.items():
            assert spec.shape.is_fully_defined(), (kind, training, key, spec.shape)
    first, again, other = ([{k: v.numpy() for k, v in b.items()} for b in _pipeline(split, kind, seed).take(2)]
                           for seed in (0, 0, 1))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
    if kind == "classification":
        labels = np.concatenate([b["label"] for b in first])
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert (labels.max(axis=1) < 0.999).any(), "MixUp/CutMix must mix"


def test_randaugment_of_a_batch_is_each_image_from_its_own_seed():
    """Per batch, every image gets what it would get alone: its result depends on its seed, not its batch."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8))
    seeds = tf.constant(np.stack([np.full(6, 7), np.arange(6)], axis=1), tf.int64)
    augment = randaugment.randaugment(2, 9.0)
    together = augment({"image": images, "seed": seeds})["image"].numpy()
    for i in range(6):
        alone = augment({"image": images[i:i + 1], "seed": seeds[i:i + 1]})["image"].numpy()[0]
        np.testing.assert_array_equal(together[i], alone)
    reordered = augment({"image": images[::-1], "seed": seeds[::-1]})["image"].numpy()
    np.testing.assert_array_equal(reordered, together[::-1])
    assert (together != images.numpy()).any(axis=(1, 2, 3)).sum() >= 4, "RandAugment 2x9 changes most images"


def test_randaugment_operations_keep_shape_and_are_identity_at_magnitude_zero():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(100, 111, (32, 32, 3)).astype(np.float32))
    for index in range(NUM_OPS):
        out = tf.switch_case(tf.constant(index), operations(image, tf.constant(0.0), tf.constant(1.0)))
        assert out.shape == image.shape and out.dtype == tf.float32
        if index not in (1, 2):  # autocontrast and equalize have no magnitude
            assert np.abs(out.numpy() - image.numpy()).max() <= 1.0, index
    stretched = tf.switch_case(tf.constant(1), operations(image, tf.constant(0.0), tf.constant(1.0))).numpy()
    equalized = tf.switch_case(tf.constant(2), operations(image, tf.constant(0.0), tf.constant(1.0))).numpy()
    assert stretched.min() == 0 and stretched.max() == 255
    assert equalized.min() <= 25 and equalized.max() >= 230  # a 100-110 histogram spread over the range
    rotated = tf.switch_case(tf.constant(3), operations(image, tf.constant(1.0), tf.constant(1.0))).numpy()
    assert (rotated == 128).any(), "a 30 degree rotation brings in grey corners"


def test_randaugment_resamples_like_the_projective_transform_and_smooths_like_avg_pool():
    """The XLA-compilable affine and 3x3 mean (randaugment.py) against the TF ops they replace."""
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.float32))
    centre = 40 / 2 - 0.5
    angle = math.radians(20)
    for a0, a1, a2, b0, b1, b2 in ([math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle), 0.0],
                                   [1.0, 0.3, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 7.3, 0.0, 1.0, -3.6]):
        ours = randaugment._affine(image, [tf.constant(v) for v in (a0, a1, a2, b0, b1, b2)])
        transform = tf.constant([[a0, a1, a2 + centre - a0 * centre - a1 * centre,
                                  b0, b1, b2 + centre - b0 * centre - b1 * centre, 0.0, 0.0]])
        theirs = geometry.project(image[None], transform, 40, randaugment.FILL)[0]
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=0.02)
    np.testing.assert_allclose(randaugment._smooth(image).numpy(),
                               tf.nn.avg_pool2d(image[None], 3, 1, "SAME")[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["classification", "segmentation", "detection"])
def test_preview_draws_masks_and_boxes(tiny_shapes, tmp_path, kind):
    source = shapes.shapes_source(tiny_shapes)
    batch = next(_pipeline(source.splits["train"], kind, 0).as_numpy_iterator())
    names = source.mask_class_names if kind == "segmentation" else source.class_names
    paths = preview.write([batch], names, str(tmp_path))
    picture = tf.io.decode_png(tf.io.read_file(paths[0])).numpy()
    cell = 48 * 3  # 48 px images are enlarged 3x to at least 128 px
    drawn = preview.draw(batch, names)
    assert drawn.shape == (8, cell, cell, 3)
    grid = (2 * cell + 2, 4 * cell + 6, 3)
    np.testing.assert_array_equal(picture[:grid[0]], preview.grid(drawn))
    if kind == "classification":  # each image's class name(s) on a band of the largest class's colour
        assert picture.shape == grid
        for image, label in zip(drawn, batch["label"]):
            np.testing.assert_array_equal(image[1, 1], drawing.colour(int(np.argmax(label))))
        assert preview.label_tags(np.array([0.62, 0, 0.38, 0, 0]), names) == [
            (0, f"{names[0]} 0.62"), (2, f"+ {names[2]} 0.38")]
    elif kind == "detection":  # boxes (and their name bands) in their class colours
        assert picture.shape == grid
        corners = [(b, i, *np.round(batch["boxes"][b, i, :2] * 3).astype(int))
                   for b, i in np.argwhere(batch["classes"] >= 0)]
        in_colour = [np.array_equal(drawn[b, y0, x0], drawing.colour(batch["classes"][b, i]))
                     for b, i, x0, y0 in corners]
        assert sum(in_colour) >= len(corners) / 2, "most box corners in their class colour (others overlap)"
    else:  # masks tinted, one legend of their classes below the grid
        assert picture.shape[1] == grid[1] and picture.shape[0] > grid[0]
        labelled = (batch["mask"][..., 0] > 0) & (batch["mask"][..., 0] != 255)
        assert labelled.any() and not np.array_equal(drawn[:, ::3, ::3][labelled], batch["image"][labelled])
    assert os.listdir(tmp_path / "preview") == ["train_batch0.png"]  # class names are drawn, not in .txt files


def test_letterbox_and_random_move_in_one_resampling_match_the_two_steps(tiny_shapes):
    """The uncached segmentation path (one warp per example) moves boxes exactly as letterbox-then-move does,
    and its masks and images agree with the two resamplings up to the second one's rounding."""
    split = shapes.shapes_source(tiny_shapes).splits["train"]
    records = split.records(tf.distribute.InputContext(), 0, True, Targets(masks=True, max_boxes=4))
    draw = spatial.random_affine_of(SIZE, (0.5, 2.0), True, translate=0.1)
    one_step = spatial.letterbox(SIZE, 255, draw)
    letterbox, move = spatial.letterbox(SIZE, 255), spatial.random_affine(SIZE, (0.5, 2.0), True, 255, 0.1)
    for index, record in enumerate(records.take(6)):
        example = decode.decode_for_size(SIZE)(record) | {"seed": tf.constant([index, 7], tf.int64)}
        once = one_step(example)
        twice = move({k: v[None] for k, v in letterbox(example).items()})
        np.testing.assert_allclose(once["boxes"].numpy(), twice["boxes"][0].numpy(), atol=1e-3)
        assert np.array_equal(once["classes"].numpy(), twice["classes"][0].numpy())
        assert np.mean(once["mask"].numpy() == twice["mask"][0].numpy()) > 0.95
        assert np.abs(once["image"].numpy().astype(int) - twice["image"][0].numpy()).mean() < 12
