"""Predictions drawn on images with Pillow: boxes labelled with class name and score, class masks tinted with
a legend, and a caption band (classification's top classes). Inputs and outputs are uint8 RGB arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
                    [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], np.uint8)


def colour(class_id: int) -> tuple[int, int, int]:
    """The drawing colour of a class."""
    return tuple(int(c) for c in PALETTE[class_id % len(PALETTE)])


def _font(image_height: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at a size readable on the image (about 1/30 of its height, 11-32 px)."""
    return ImageFont.load_default(size=int(np.clip(image_height / 30, 11, 32)))


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if sum(background) > 384 else (255, 255, 255)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: Sequence[int], scores: Sequence[float],
               names: Sequence[str]) -> np.ndarray:
    """`image` with each box (x0, y0, x1, y1 in its pixels) outlined in its class colour and labelled
    "name 0.87" on a filled band above it (inside the image when the box touches the top)."""
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(picture)
    font = _font(picture.height)
    width = max(1, round(picture.height / 300))
    for box, class_id, score in zip(np.asarray(boxes, np.float32), classes, scores):
        fill = colour(int(class_id))
        x0, y0, x1, y1 = (float(v) for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=fill, width=width)
        label = f"{names[int(class_id)]} {float(score):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        text_h = bottom - top + 2 * width
        y = y0 - text_h if y0 - text_h >= 0 else y0
        pen.rectangle([x0, y, x0 + right - left + 2 * width, y + text_h], fill=fill)
        pen.text((x0 + width, y + width - top), label, fill=_text_colour(fill), font=font)
    return np.asarray(picture)


def overlay_mask(image: np.ndarray, mask: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """`image` tinted by the class-index `mask` ([h, w]; a class named "background" and values outside
    0..len(names)-1 untinted), with a legend band below naming the classes present, largest first, with
    their share."""
    picture = np.asarray(image, np.uint8)
    mask = np.asarray(mask)
    background = [name.lower() for name in names].index("background") if "background" in map(str.lower, names) else -1
    shown = (mask >= 0) & (mask < len(names)) & (mask != background)
    tint = PALETTE[np.where(shown, mask, 0) % len(PALETTE)]
    picture = np.where(shown[..., None], (picture * 0.45 + tint * 0.55).astype(np.uint8), picture)
    present = [(int(c), float(np.mean(mask == c))) for c in np.unique(mask[(mask >= 0) & (mask < len(names))])]
    present.sort(key=lambda item: -item[1])
    return _legend(picture, [((255, 255, 255) if c == background else colour(c), f"{names[c]} {share:.0%}")
                             for c, share in present])


def _legend(image: np.ndarray, entries: list[tuple[tuple[int, int, int], str]]) -> np.ndarray:
    """`image` above a white band of colour swatches and their labels, wrapped to the image's width."""
    font = _font(max(image.shape[0], 240))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = measure.textbbox((0, 0), "Ag", font=font)[3] + 6
    rows, row, x = [], [], 4
    for fill, label in entries:
        width = line_h + measure.textlength(label, font=font) + 12
        if row and x + width > image.shape[1]:
            rows.append(row)
            row, x = [], 4
        row.append((fill, label, x))
        x += width
    rows.append(row)
    band = Image.new("RGB", (image.shape[1], line_h * len(rows) + 4), (255, 255, 255))
    pen = ImageDraw.Draw(band)
    for index, entries_in_row in enumerate(rows):
        y = 2 + index * line_h
        for fill, label, x in entries_in_row:
            pen.rectangle([x, y + 2, x + line_h - 6, y + line_h - 4], fill=fill, outline=(0, 0, 0))
            pen.text((x + line_h, y), label, fill=(0, 0, 0), font=font)
    return np.concatenate([image, np.asarray(band)], axis=0)


def caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """`image` below a white band with `lines` of text (classification: the top classes and scores)."""
    picture = np.asarray(image, np.uint8)
    font = _font(max(picture.shape[0], 240))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = measure.textbbox((0, 0), "Ag", font=font)[3] + 4
    width = max([picture.shape[1]] + [int(measure.textlength(line, font=font)) + 8 for line in lines])
    band = Image.new("RGB", (width, line_h * len(lines) + 6), (255, 255, 255))
    pen = ImageDraw.Draw(band)
    for index, line in enumerate(lines):
        pen.text((4, 3 + index * line_h), line, fill=(0, 0, 0), font=font)
    canvas = np.full((picture.shape[0], width, 3), 255, np.uint8)
    canvas[:, :picture.shape[1]] = picture
    return np.concatenate([np.asarray(band), canvas], axis=0)
