"""Labels and predictions drawn on images with Pillow: boxes labelled with class name (and score), class masks
tinted with a legend, class names tagged on an image, and a caption band (classification's top classes). Inputs
and outputs are uint8 RGB arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
                    [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], np.uint8)


def enlarged(pixels: np.ndarray, factor: int) -> np.ndarray:
    """An image or mask ([h, w, ...]) enlarged `factor` times by pixel repetition, so drawn text stays readable
    on small images (boxes drawn on it scale by `factor` too)."""
    return np.asarray(pixels).repeat(factor, axis=0).repeat(factor, axis=1)


def colour(class_id: int) -> tuple[int, int, int]:
    """The drawing colour of a class."""
    return tuple(int(c) for c in PALETTE[class_id % len(PALETTE)])


def _font(image_height: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at a size readable on the image (about 1/30 of its height, 11-32 px)."""
    return ImageFont.load_default(size=int(np.clip(image_height / 30, 11, 32)))


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if sum(background) > 384 else (255, 255, 255)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: Sequence[int], scores: Sequence[float] | None,
               names: Sequence[str]) -> np.ndarray:
    """`image` with each box (x0, y0, x1, y1 in its pixels) outlined in its class colour and labelled "name 0.87"
    (without `scores`, as for true boxes: "name") on a filled band above it, kept inside the image."""
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(picture)
    font = _font(picture.height)
    width = max(1, round(picture.height / 300))
    scores = [None] * len(classes) if scores is None else scores
    for box, class_id, score in zip(np.asarray(boxes, np.float32), classes, scores):
        fill = colour(int(class_id))
        x0, y0, x1, y1 = (float(v) for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=fill, width=width)
        label = names[int(class_id)] if score is None else f"{names[int(class_id)]} {float(score):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left + 2 * width, bottom - top + 2 * width
        x = max(0.0, min(x0, picture.width - text_w))
        y = y0 - text_h if y0 - text_h >= 0 else max(y0, 0.0)
        pen.rectangle([x, y, x + text_w, y + text_h], fill=fill)
        pen.text((x + width, y + width - top), label, fill=_text_colour(fill), font=font)
    return np.asarray(picture)


def tags(image: np.ndarray, labels: Sequence[tuple[int, str]]) -> np.ndarray:
    """`image` with each (class id, text) of `labels` on a band of the class colour, stacked at its top left
    (a training image's class names)."""
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(picture)
    font = _font(picture.height)
    y = 0
    for class_id, text in labels:
        fill = colour(class_id)
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        pen.rectangle([0, y, right - left + 4, y + bottom - top + 4], fill=fill)
        pen.text((2, y + 2 - top), text, fill=_text_colour(fill), font=font)
        y += bottom - top + 5
    return np.asarray(picture)


def _background(names: Sequence[str]) -> int:
    """The index of the class named "background" (any case), or -1."""
    lowered = [name.lower() for name in names]
    return lowered.index("background") if "background" in lowered else -1


def tint(image: np.ndarray, mask: np.ndarray, names: Sequence[str], ignore_value: int | None = None) -> np.ndarray:
    """`image` tinted by the class-index `mask` ([h, w]) in the class colours; a class named "background" and
    values outside 0..len(names)-1 untinted, pixels of `ignore_value` darkened."""
    picture = np.asarray(image, np.uint8)
    mask = np.asarray(mask).astype(np.int64)
    ignored = mask == ignore_value if ignore_value is not None else np.zeros(mask.shape, bool)
    shown = (mask >= 0) & (mask < len(names)) & (mask != _background(names)) & ~ignored
    tinted = (picture * 0.45 + PALETTE[np.where(shown, mask, 0) % len(PALETTE)] * 0.55).astype(np.uint8)
    picture = np.where(shown[..., None], tinted, picture)
    return np.where(ignored[..., None], picture // 3, picture)


def swatch(class_id: int, names: Sequence[str]) -> tuple[int, int, int]:
    """A class's colour in legends: its drawing colour, white for the class named "background"."""
    return (255, 255, 255) if class_id == _background(names) else colour(class_id)


def overlay_mask(image: np.ndarray, mask: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """`image` tinted by the class-index `mask` (`tint`), with a legend band below naming the classes present,
    largest first, with their share."""
    mask = np.asarray(mask)
    present = [(int(c), float(np.mean(mask == c))) for c in np.unique(mask[(mask >= 0) & (mask < len(names))])]
    present.sort(key=lambda item: -item[1])
    return legend(tint(image, mask, names), [(swatch(c, names), f"{names[c]} {share:.0%}") for c, share in present])


def legend(image: np.ndarray, entries: Sequence[tuple[tuple[int, int, int], str]]) -> np.ndarray:
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
