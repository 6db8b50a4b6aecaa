"""The run configuration: one field per `launch.py` flag, same names, plus what was resolved at start."""

from __future__ import annotations

import dataclasses
import json
import os


class FlagError(ValueError):
    """A flag value that cannot work; the message names the flag."""


@dataclasses.dataclass
class Config:
    """Everything a run needs. Field names equal the flag names of launch.py."""

    task: str = "classification"
    dataset: str = "shapes"
    val_fraction: float = 0.2
    mask_dirs: list[str] = dataclasses.field(default_factory=lambda: ["images", "masks"])
    mask_classes: list[str] | None = None
    cache_dir: str = ""
    cache: str = "none"
    map_parallelism: int = 0
    prefetch_batches: int = -1
    data_dir: str = ""
    tfds_download: bool = False
    model: str | None = None  # None here and below: the task's default (engine/tasks.py TASK_DEFAULTS)
    weights: str = ""
    strategy: str = "default"
    cpu_replicas: int = 2
    tpu: str = ""
    batch_size: int = 64
    image_size: int | None = None
    epochs: int | None = None
    train_steps: int = 0
    optimizer: str = "adamw"
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    precision: str = "auto"
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    model_dir: str = ""
    mode: str = "train_and_eval"
    output: str = ""
    num_shards: int = 16
    seed: int = 0
    deterministic: bool = False
    skip_bad_files: bool = False
    flip: bool = True
    color_jitter: float | None = None  # None: the task's default for the model (engine/tasks.py)
    hue: float | None = None
    randaugment_ops: int | None = None
    randaugment_magnitude: float = 9.0
    mixup: float | None = None
    cutmix: float | None = None
    label_smoothing: float | None = None
    min_scale: float | None = None
    max_scale: float | None = None
    ignore_value: int = 255
    dice_weight: float | None = None
    class_weights: list[str] | None = None
    mosaic: float | None = None
    box_mixup: float = 0.0
    max_boxes: int = 0  # 0: the most boxes in one image of the data (x4 with Mosaic, x2 with MixUp)
    nms_iou: float = 0.7
    nms_confidence: float = 0.001
    skip_bad_labels: bool = False
    preview_batches: int = 3
    profile_steps: str = ""
    benchmark_steps: int = 30
    verbose: int = 1
    resolved: dict = dataclasses.field(default_factory=dict)

    def write(self, path: str) -> None:
        """Writes the configuration, resolved values included, as JSON."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)


def default_cache_dir() -> str:
    """Where generated datasets live: $ENGINE_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /tfdata-engine."""
    if os.environ.get("ENGINE_CACHE_DIR"):
        return os.environ["ENGINE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfdata-engine")
