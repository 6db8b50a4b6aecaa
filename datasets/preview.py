"""Pictures of what the model will see: grids of augmented training batches with their labels drawn on them by
`datasets/drawing.py` (Pillow): each image's class name (the two largest of a MixUp/CutMix soft label, with
their weights), boxes with their class names, masks tinted with a legend of their classes.

Written as PNG files (like the `train_batch*.jpg` YOLO users look at first) and as TensorBoard images.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from datasets import drawing

MIN_CELL = 128  # smaller images are enlarged (pixel repetition) to at least this side, so labels stay readable
SOFT_SHOWN = 0.01  # a soft label's second class is named from this weight on


def enlarge(images: np.ndarray, min_cell: int = MIN_CELL) -> tuple[np.ndarray, int]:
    """[B, H, W, ...] enlarged by the whole factor (pixel repetition) that makes H at least `min_cell`; and the
    factor."""
    factor = max(1, -(-min_cell // images.shape[1]))
    return images.repeat(factor, axis=1).repeat(factor, axis=2), factor


def label_tags(label: np.ndarray, class_names: Sequence[str]) -> list[tuple[int, str]]:
    """An image label as (class id, text) tags: its class name; a soft label's two largest classes with their
    weights ("shirt 0.62", "+ coat 0.38"; the second only from SOFT_SHOWN)."""
    label = np.asarray(label)
    if label.ndim == 0:
        return [(int(label), class_names[int(label)])]
    first, second = np.argsort(-label, kind="stable")[:2]
    tags = [(int(first), f"{class_names[first]} {label[first]:.2f}")]
    if label[second] >= SOFT_SHOWN:
        tags.append((int(second), f"+ {class_names[second]} {label[second]:.2f}"))
    return tags


def draw(batch: dict[str, np.ndarray], class_names: Sequence[str], ignore_value: int | None = 255,
         min_cell: int = MIN_CELL) -> np.ndarray:
    """The batch's images (uint8 [B, S, S, 3]) enlarged to at least `min_cell` px with their labels drawn: a
    "label"'s class name(s) at the top left, "mask" classes tinted (a class named "background" untinted,
    `ignore_value` pixels darkened), "boxes" outlined and named by their "classes" (-1: none), with their
    "scores" when the batch has them."""
    images, factor = enlarge(np.asarray(batch["image"], np.uint8), min_cell)
    cells = []
    for index, image in enumerate(images):
        if "mask" in batch:
            mask = drawing.enlarged(np.asarray(batch["mask"][index])[..., 0], factor)
            image = drawing.tint(image, mask, class_names, ignore_value)
        if "boxes" in batch:
            classes = np.asarray(batch["classes"][index])
            real = classes >= 0
            scores = np.asarray(batch["scores"][index])[real] if "scores" in batch else None
            image = drawing.draw_boxes(image, np.asarray(batch["boxes"][index])[real] * factor, classes[real], scores,
                                       class_names)
        if "label" in batch:
            image = drawing.tags(image, label_tags(batch["label"][index], class_names))
        cells.append(image)
    return np.stack(cells)


def mask_legend(masks: Sequence[np.ndarray], class_names: Sequence[str], ignore_value: int | None = 255
                ) -> list[tuple[tuple[int, int, int], str]]:
    """The legend entries (swatch colour, text) of the classes in `masks`, in class order, and of their
    `ignore_value` pixels (darkened) when there are any."""
    present = set()
    for mask in masks:
        present.update(int(value) for value in np.unique(mask))
    entries = [(drawing.swatch(c, class_names), class_names[c]) for c in sorted(present) if 0 <= c < len(class_names)
               and c != ignore_value]
    if ignore_value in present:
        entries.append(((85, 85, 85), f"ignored ({ignore_value})"))
    return entries


def with_legends(cells: np.ndarray, masks: Sequence[Sequence[np.ndarray]], class_names: Sequence[str],
                 ignore_value: int | None = 255) -> np.ndarray:
    """Each cell above the legend of its `masks` (a list per cell), padded with white to the tallest."""
    drawn = [drawing.legend(cell, mask_legend(cell_masks, class_names, ignore_value))
             for cell, cell_masks in zip(cells, masks)]
    height = max(cell.shape[0] for cell in drawn)
    return np.stack([np.pad(cell, [(0, height - cell.shape[0]), (0, 0), (0, 0)], constant_values=255)
                     for cell in drawn])


def grid(images: np.ndarray, columns: int = 4, gap: int = 2, min_cell: int = 128) -> np.ndarray:
    """Tiles [B, H, W, 3] into one image, `columns` wide, white gaps between the cells; small images are
    enlarged by an integer factor (pixel repetition) to at least `min_cell` pixels."""
    images, _ = enlarge(images, min_cell)
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    out = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        out[row * (height + gap):row * (height + gap) + height, column * (width + gap):column * (width + gap) + width] \
            = image
    return out


def write(batches: list[dict[str, np.ndarray]], class_names: Sequence[str], directory: str,
          ignore_value: int | None = 255, max_images: int = 16) -> list[str]:
    """Writes `directory`/preview/train_batch{i}.png (labels drawn; masks with one legend below the grid) and
    TensorBoard images under `directory`/tensorboard/preview; returns the PNG paths."""
    out_dir = os.path.join(directory, "preview")
    tf.io.gfile.makedirs(out_dir)
    writer = tf.summary.create_file_writer(os.path.join(directory, "tensorboard", "preview"))
    paths = []
    for i, batch in enumerate(batches):
        batch = {k: np.asarray(v)[:max_images] for k, v in batch.items()}
        picture = grid(draw(batch, class_names, ignore_value))
        if "mask" in batch:
            picture = drawing.legend(picture, mask_legend(batch["mask"], class_names, ignore_value))
        path = os.path.join(out_dir, f"train_batch{i}.png")
        tf.io.write_file(path, tf.io.encode_png(picture))
        with writer.as_default():
            tf.summary.image("train_batch", picture[None], step=i,
                             description="Augmented training images, row by row, with their labels drawn")
        paths.append(path)
    writer.close()
    return paths
