"""Drawing of the generated shapes dataset: NumPy only, so worker processes start without TensorFlow.

`datasets/sources/shapes.py` writes what this draws to files.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross")
SPLITS = ("train", "val")


def _polygon(kind: str, radius: float, angle: float) -> list[np.ndarray]:
    """Returns the shape as a list of polygons (vertex arrays, centred at 0) whose union is the shape."""

    def ring(n: int, r: float, phase: float) -> np.ndarray:
        t = phase + angle + np.arange(n) * 2 * np.pi / n
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)

    if kind == "square":
        return [ring(4, radius, np.pi / 4)]
    if kind == "triangle":
        return [ring(3, radius, np.pi / 2)]
    if kind == "star":
        outer, inner = ring(5, radius, np.pi / 2), ring(5, radius * 0.45, np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    if kind == "cross":
        w, h = radius, radius * 0.34
        bar = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return [bar @ rot.T, bar[:, ::-1] @ rot.T]
    raise ValueError(f"unknown polygon shape {kind!r}")


def _inside_polygon(xs: np.ndarray, ys: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test over a pixel grid."""
    inside = np.zeros(xs.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        crosses = (ay > ys) != (by > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


def _shape_mask(kind: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of one shape, sampled at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xs, ys = xs - cx, ys - cy
    if kind == "circle":
        return xs**2 + ys**2 <= radius**2
    mask = np.zeros((size, size), dtype=bool)
    for poly in _polygon(kind, radius, angle):
        mask |= _inside_polygon(xs, ys, poly)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 textured background: base colour, gradient, sinusoidal stripes and Gaussian noise."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    gradient = rng.uniform(-50, 50, size=(2, 3)).astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
    stripes = np.sin(2 * np.pi * freq * (xs * np.cos(theta) + ys * np.sin(theta)))
    image = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(4, 14))
    image += base + xs[..., None] * gradient[0] + ys[..., None] * gradient[1]
    image += stripes[..., None] * rng.uniform(5, 30, size=3).astype(np.float32)
    return image


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A random colour far enough from the background's mean colour to be visible."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - background_mean).sum() > 150:
            return colour.astype(np.float32)
    return (255.0 - background_mean).astype(np.float32)


def _overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]], margin: float) -> bool:
    return any(
        box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and b[1] < box[3] + margin
        for b in boxes
    )


def make_example(rng: np.random.Generator, size: int, max_distractors: int = 2
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draws one image; returns (uint8 image HxWx3, uint8 class-index mask HxW, annotation dict)."""
    image = _background(rng, size)
    background_mean = image.reshape(-1, 3).mean(axis=0)
    mask = np.zeros((size, size), dtype=np.uint8)
    label = int(rng.integers(len(CLASS_NAMES)))
    objects = [(label, rng.uniform(0.18, 0.32) * size)]
    objects += [(int(rng.integers(len(CLASS_NAMES))), rng.uniform(0.07, 0.12) * size)
                for _ in range(int(rng.integers(0, max_distractors + 1)))]
    boxes, box_classes, placed = [], [], []
    for class_id, radius in objects:
        for _ in range(50):
            cx, cy = rng.uniform(radius, size - radius, size=2)
            candidate = (cx - radius, cy - radius, cx + radius, cy + radius)
            if not _overlaps(candidate, placed, margin=2.0):
                break
        else:
            continue  # no free space left for this distractor
        placed.append(candidate)
        shape = _shape_mask(CLASS_NAMES[class_id], size, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        rows, cols = np.nonzero(shape)
        shading = rng.standard_normal((rows.size, 1), dtype=np.float32) * np.float32(6)
        image[rows, cols] = _contrasting_colour(rng, background_mean) + shading
        mask[rows, cols] = class_id + 1
        boxes.append([int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1])
        box_classes.append(class_id)
    annotation = {"label": label, "boxes": boxes, "box_classes": box_classes}
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, annotation


def draw(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Example `index` of `split`: its own seeded generator makes it independent of drawing order."""
    return make_example(np.random.default_rng([seed, SPLITS.index(split), index]), size)
