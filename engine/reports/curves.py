"""Training curves (results.png) from a run's history.csv (Keras' CSVLogger, one row per epoch, appended across
restarts): one panel per loss and per task metric (training and validation on one axis), the learning rate
and images/s, against the 1-based epoch.

A resumed run re-trains the epoch it was killed in, so history.csv may hold an epoch twice: the last row of each
epoch is kept and the rows are drawn in epoch order (a dotted line marks where a run was resumed). Per-class
columns (val_iou_<class>, val_ap50_<class>) and the timing details (step and input-wait seconds) are left out.
"""

from __future__ import annotations

import csv

import numpy as np
import tensorflow as tf
from matplotlib import pyplot as plt
from matplotlib.ticker import MaxNLocator

from engine.reports import plots

PER_CLASS_PREFIXES = ("iou_", "ap50_")  # val_<metric>_<class> columns (engine/tasks: Task.per_class)
LEFT_OUT = {"epoch", "step_seconds", "input_wait_seconds", "input_wait_fraction"}
RATES = {"learning_rate": "learning rate", "images_per_second": "images/s (training)"}
MARKED_EPOCHS = 30  # points are marked up to this many epochs
COLUMNS = 5  # panels per row, at most


def history_rows(history_csv: str) -> list[dict[str, str]]:
    """The rows of a run's history.csv, none before its first epoch (no file yet)."""
    if not tf.io.gfile.exists(history_csv):
        return []
    with tf.io.gfile.GFile(history_csv) as f:
        return list(csv.DictReader(f))


def read(history_csv: str) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    """The 1-based epochs in order (the last row of a repeated epoch kept), each column's values per epoch
    (NaN where missing or "NA"), and the epochs at which a restarted run resumed."""
    rows = history_rows(history_csv)
    kept, resumed, previous = {}, [], 0
    for row in rows:
        epoch = int(float(row["epoch"])) + 1
        if epoch <= previous:
            resumed.append(epoch)
        kept[epoch], previous = row, epoch
    epochs = np.array(sorted(kept), np.int64)
    columns = [name for name in (rows[0] if rows else {}) if name not in LEFT_OUT]
    return epochs, {name: np.array([_number(kept[e].get(name)) for e in epochs]) for name in columns}, resumed


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def panels(columns: list[str]) -> list[tuple[str, list[str]]]:
    """(title, columns drawn on it): each loss, then each task metric (training and validation together; per-class
    columns left out), then the learning rate and images/s."""
    groups: dict[str, list[str]] = {}
    for name in columns:
        base = name[len("val_"):] if name.startswith("val_") else name
        if not base.startswith(PER_CLASS_PREFIXES):
            groups.setdefault(base, []).append(name)
    losses = sorted((base for base in groups if base.endswith("loss")), key=lambda base: (base != "loss", base))
    metrics = [base for base in groups if base not in RATES and base not in losses]
    return ([(base, sorted(groups[base], key=lambda name: name.startswith("val_"))) for base in losses + metrics]
            + [(RATES[base], groups[base]) for base in RATES if base in groups])


def _draw(axes: plt.Axes, epochs: np.ndarray, series: dict[str, np.ndarray], title: str, names: list[str],
          resumed: list[int]) -> None:
    """One panel: each of `names` that has values, the best validation value of a metric named in its legend."""
    marker = "o" if len(epochs) <= MARKED_EPOCHS else None
    for name in names:
        values = series[name]
        finite = np.isfinite(values)
        validation = name.startswith("val_")
        label = "val" if validation else "train"
        if validation and not title.endswith("loss"):
            best = int(np.nanargmax(values))
            label += f" (best {values[best]:.4g}, epoch {epochs[best]})"
        axes.plot(epochs[finite], values[finite], marker=marker, markersize=3, linewidth=1.5, label=label,
                  color="tab:orange" if validation else "tab:blue")
    for epoch in resumed:
        axes.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    axes.grid(alpha=0.3)
    if title in RATES.values():
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    else:
        axes.legend(fontsize=8)


def write(history_csv: str, path: str) -> str:
    """Draws results.png at `path` from `history_csv`; returns the path."""
    epochs, series, resumed = read(history_csv)
    drawn = [(title, names) for title, names in panels(list(series))
             if any(np.isfinite(series[name]).any() for name in names)]
    rows = -(-max(len(drawn), 1) // COLUMNS)
    columns = -(-max(len(drawn), 1) // rows)
    figure, grid = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows + 0.6), dpi=plots.DPI,
                                squeeze=False)
    for axes, (title, names) in zip(grid.flat, drawn):
        _draw(axes, epochs, series, title, [name for name in names if np.isfinite(series[name]).any()], resumed)
    for axes in grid.flat[len(drawn):]:
        axes.set_axis_off()
    note = f", resumed at epoch {', '.join(map(str, resumed))}" if resumed else ""
    figure.suptitle(f"Training curves: {len(epochs)} epoch{'s' if len(epochs) != 1 else ''}{note}")
    figure.tight_layout()
    return plots.save(figure, path)
