"""Plots of the reports with matplotlib (Agg, no display): a confusion matrix and a bar chart, readable from 3
classes to 100 (COCO): figure size, font size and cell annotations follow the class count."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine import files  # noqa: E402

ANNOTATED_CLASSES = 30  # cells carry their values up to this many classes
DPI = 100


def _label_size(count: int) -> float:
    """Tick label font size for `count` labels: 10 pt up to 20 labels, down to 5 pt at 100."""
    return float(np.clip(10 - (count - 20) * 5 / 80, 5, 10))


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row of `matrix` divided by its total, as float64 (rows without counts stay 0): a confusion matrix
    normalised by true class."""
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)


def confusion_matrix(matrix: np.ndarray, row_names: Sequence[str], column_names: Sequence[str], title: str,
                     normalised: bool, xlabel: str = "predicted", ylabel: str = "true") -> plt.Figure:
    """A heatmap of `matrix` (rows: true, columns: predicted); `normalised` values are fractions in [0, 1]
    shown with two decimals, otherwise counts. Zero cells stay blank."""
    rows, columns = matrix.shape
    side = float(np.clip(0.35 * max(rows, columns) + 2.5, 5, 30))
    figure, axes = plt.subplots(figsize=(side + 1.5, side), dpi=DPI)
    shown = np.ma.masked_equal(np.asarray(matrix, np.float64), 0)
    image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalised else max(float(np.max(matrix)), 1))
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    size = _label_size(max(rows, columns))
    axes.set_xticks(range(columns), list(column_names), rotation=90, fontsize=size)
    axes.set_yticks(range(rows), list(row_names), fontsize=size)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if max(rows, columns) <= ANNOTATED_CLASSES:
        limit = 1.0 if normalised else max(float(np.max(matrix)), 1)
        for (row, column), value in np.ndenumerate(matrix):
            if value:
                text = (f"{value:.2f}" if value >= 0.005 else "<.01") if normalised else f"{int(value)}"
                axes.text(column, row, text, ha="center", va="center", fontsize=size * 0.9,
                          color="white" if value > 0.5 * limit else "black")
    figure.tight_layout()
    return figure


def bars(values: Sequence[float], names: Sequence[str], title: str, xlabel: str) -> plt.Figure:
    """Horizontal bars of `values` (NaN: no bar, marked "n/a"), one per name, top to bottom in the given order,
    each labelled with its value."""
    count = len(names)
    figure, axes = plt.subplots(figsize=(8, float(np.clip(0.3 * count + 1.5, 3, 30))), dpi=DPI)
    values = np.asarray(values, np.float64)
    positions = np.arange(count)
    axes.barh(positions, np.nan_to_num(values), color="tab:blue")
    axes.set_yticks(positions, list(names), fontsize=_label_size(count))
    axes.invert_yaxis()
    axes.set_xlim(0, max(1.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0) * 1.12)
    for position, value in zip(positions, values):
        axes.text(np.nan_to_num(value) + 0.01, position, "n/a" if np.isnan(value) else f"{value:.3f}",
                  va="center", fontsize=_label_size(count))
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    figure.tight_layout()
    return figure


def save(figure: plt.Figure, path: str) -> str:
    """Writes `figure` as a PNG at `path` (any file system) and closes it; returns the path."""
    png = io.BytesIO()
    figure.savefig(png, dpi=DPI, format="png")
    plt.close(figure)
    files.write_file(path, png.getvalue())
    return path
