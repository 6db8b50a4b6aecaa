"""Pictures of what the model will see: grids of augmented training batches with masks and boxes drawn.

Written as PNG files (like the `train_batch*.jpg` YOLO users look at first) and as TensorBoard images, with
a text file naming each cell's label.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
                    [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], np.uint8)


def _draw_box(image: np.ndarray, box: np.ndarray, colour: np.ndarray, width: int) -> None:
    height, image_width = image.shape[:2]
    x0, y0, x1, y1 = np.round(box).astype(int)
    x0, x1 = np.clip([x0, x1 - 1], 0, image_width - 1)
    y0, y1 = np.clip([y0, y1 - 1], 0, height - 1)
    image[y0:y0 + width, x0:x1 + 1] = colour
    image[max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = colour
    image[y0:y1 + 1, x0:x0 + width] = colour
    image[y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = colour


def draw(batch: dict[str, np.ndarray], ignore_value: int = 255) -> np.ndarray:
    """The batch's images (uint8 [B, S, S, 3]) with "mask" classes tinted (0 = background untinted, ignored
    pixels darkened) and "boxes" outlined in their class colours."""
    images = np.array(batch["image"], np.uint8)
    if "mask" in batch:
        mask = np.asarray(batch["mask"])[..., 0]
        tint = PALETTE[mask.astype(int) % len(PALETTE)]
        labelled = ((mask > 0) & (mask != ignore_value))[..., None]
        images = np.where(labelled, (images * 0.5 + tint * 0.5).astype(np.uint8), images)
        images = np.where((mask == ignore_value)[..., None], images // 3, images)
    if "boxes" in batch:
        width = max(1, images.shape[1] // 128)
        for image, boxes, classes in zip(images, np.asarray(batch["boxes"]), np.asarray(batch["classes"])):
            for box, class_id in zip(boxes, classes):
                if class_id >= 0:
                    _draw_box(image, box, PALETTE[class_id % len(PALETTE)], width)
    return images


def grid(images: np.ndarray, columns: int = 4, gap: int = 2, min_cell: int = 128) -> np.ndarray:
    """Tiles [B, H, W, 3] into one image, `columns` wide, white gaps between the cells; small images are
    enlarged by an integer factor (pixel repetition) to at least `min_cell` pixels."""
    factor = max(1, -(-min_cell // images.shape[1]))
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    out = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        out[row * (height + gap):row * (height + gap) + height, column * (width + gap):column * (width + gap) + width] \
            = image
    return out


def describe(batch: dict[str, np.ndarray], class_names: list[str]) -> list[str]:
    """One line per cell: its label (soft labels: the classes with weight), or its boxes' classes."""
    lines = []
    for i in range(len(batch["image"])):
        if "label" in batch:
            label = np.asarray(batch["label"][i])
            if label.ndim == 0:
                lines.append(class_names[int(label)])
            else:
                lines.append(" + ".join(f"{label[k]:.2f} {class_names[k]}" for k in np.argsort(-label) if label[k] > 0.005))
        elif "classes" in batch:
            lines.append(", ".join(class_names[c] for c in np.asarray(batch["classes"][i]) if c >= 0) or "(no boxes)")
        else:
            present = np.unique(np.asarray(batch["mask"][i]))
            lines.append("mask classes " + ", ".join(str(v) for v in present))
    return lines


def write(batches: list[dict[str, np.ndarray]], class_names: list[str], directory: str, ignore_value: int = 255,
          max_images: int = 16) -> list[str]:
    """Writes `directory`/preview/train_batch{i}.png (+ .txt labels) and TensorBoard images under
    `directory`/tensorboard/preview; returns the PNG paths."""
    out_dir = os.path.join(directory, "preview")
    os.makedirs(out_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(directory, "tensorboard", "preview"))
    paths = []
    for i, batch in enumerate(batches):
        batch = {k: np.asarray(v)[:max_images] for k, v in batch.items()}
        picture = grid(draw(batch, ignore_value))
        path = os.path.join(out_dir, f"train_batch{i}.png")
        tf.io.write_file(path, tf.io.encode_png(picture))
        with open(os.path.join(out_dir, f"train_batch{i}.txt"), "w") as f:
            f.write("".join(f"{cell}: {line}\n" for cell, line in enumerate(describe(batch, class_names))))
        with writer.as_default():
            tf.summary.image("train_batch", picture[None], step=i,
                             description="Augmented training images, row by row; labels in preview/*.txt")
        paths.append(path)
    writer.close()
    return paths
