"""The run configuration: one field per `launch.py` flag, same names, and the option lists of the flags that
take one of a few values (each listed once, here). Nothing here imports TensorFlow: launch.py defines its
flags from this module before TensorFlow starts.

A Config is never changed once made. `engine/job.py` makes the run's own copy with the task's defaults for
the flags not given (`dataclasses.replace`), which is what `config.json` holds.
"""

from __future__ import annotations

import dataclasses
import os
import re

TASKS = ("classification", "segmentation", "detection")  # engine/tasks/
MODES = ("train", "eval", "train_and_eval", "convert", "inspect", "preview", "benchmark", "export", "predict",
         "serve", "data_dispatcher", "data_worker")  # engine/run.py
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")  # engine/devices.py
OPTIMIZERS = ("sgd", "adam", "adamw")  # engine/optim.py
LR_SCHEDULES = ("cosine", "constant")  # engine/optim.py
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # engine/precision.py
JIT_CHOICES = ("auto", "true", "false")  # engine/precision.py
EXPORT_FORMATS = ("saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx")  # engine/export.py
CHECKPOINT_CHOICES = ("best", "final")  # engine/run_dir.py
CACHE_CHOICES = "auto | none | memory | disk:PATH"  # auto: engine/plan.py; the others: datasets/pipeline.py
CHOICES = {"task": TASKS, "mode": MODES, "strategy": STRATEGIES, "optimizer": OPTIMIZERS,
           "lr_schedule": LR_SCHEDULES, "precision": PRECISIONS, "jit_compile": JIT_CHOICES,
           "checkpoint": CHECKPOINT_CHOICES}


class FlagError(ValueError):
    """A flag value that cannot work; the message names the flag."""


class ParityError(ValueError):
    """An exported model that does not predict what the trained one does (engine/export.py)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs. Field names equal the flag names of launch.py. None: planned from the data
    (engine/plan.py and the tasks' `planned`) or the task's default for the model (the tasks' `defaults`)."""

    task: str = "classification"
    dataset: str = "shapes"
    val_fraction: float = 0.2
    mask_dirs: list[str] = dataclasses.field(default_factory=lambda: ["images", "masks"])
    mask_classes: list[str] | None = None
    cache_dir: str = ""
    cache: str = "auto"
    map_parallelism: int = 0
    prefetch_batches: int = -1
    data_dir: str = ""
    tfds_download: bool = False
    model: str | None = None
    init_checkpoint: str = ""
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    train_backbone_bn: bool = False
    strategy: str = "default"
    cpu_replicas: int = 2
    tpu: str = ""
    batch_size: int | None = None
    image_size: int | None = None
    epochs: int | None = None
    train_steps: int = 0
    patience: int = 0
    optimizer: str = "adamw"
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float | None = None  # None: the task's
    ema_decay: float | None = None  # None: planned (engine/plan.py:ema_decay)
    dct_decode: bool | None = None  # None: planned (engine/plan.py:dct_decode)
    grad_accum_steps: int = 1
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
    min_crop_area: float | None = None
    color_jitter: float | None = None
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
    checkpoint: str = "best"
    checkpoint_steps: int = 0  # 0: back up at epoch ends only
    nan_retries: int = 3
    debug_nan_steps: list[str] = dataclasses.field(default_factory=list)  # test hook: optimizer steps made NaN
    formats: list[str] = dataclasses.field(default_factory=list)  # []: every format of EXPORT_FORMATS
    parity_images: int = 64
    calibration_images: int = 200
    export: str = ""
    images: str = ""
    port: int = 8501
    data_service: str = ""  # grpc://HOST:PORT of a tf.data service dispatcher (engine/data_service.py)
    dispatcher: str = ""  # --mode=data_worker: the dispatcher's HOST:PORT
    data_service_dir: str = ""  # --mode=data_dispatcher: its journal, so that a restarted dispatcher goes on
    verbose: int = 1

    def __post_init__(self):
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise FlagError(f"--{name}={getattr(self, name)} is unknown; choose one of {', '.join(choices)}")
        if self.cache not in ("auto", "none", "memory") and not (self.cache.startswith("disk:") and len(self.cache) > 5):
            raise FlagError(f"--cache={self.cache} is not one of {CACHE_CHOICES}")
        for name, lowest in (("batch_size", 1), ("image_size", 8), ("epochs", 1), ("train_steps", 0),
                             ("patience", 0), ("freeze_epochs", 0), ("grad_accum_steps", 1),
                             ("parity_images", 1), ("calibration_images", 1)):
            if getattr(self, name) is not None and getattr(self, name) < lowest:
                raise FlagError(f"--{name}={getattr(self, name)} must be at least {lowest}")
        if self.min_crop_area is not None and not 0.0 < self.min_crop_area <= 1.0:
            raise FlagError(f"--min_crop_area={self.min_crop_area} must be in (0, 1]")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise FlagError(f"--ema_decay={self.ema_decay} must be in [0, 1): 0 is off, 0.999 a common value")
        if self.checkpoint_steps < 0 or self.checkpoint_steps % self.grad_accum_steps:
            raise FlagError(f"--checkpoint_steps={self.checkpoint_steps} must be 0 (epoch ends only) or a positive "
                            f"multiple of --grad_accum_steps={self.grad_accum_steps}")
        if self.data_service and not re.fullmatch(r"(grpc://)?[^:/]+:[0-9]+", self.data_service):
            raise FlagError(f"--data_service={self.data_service} must be grpc://HOST:PORT, the address of a tf.data "
                            "service dispatcher (--mode=data_dispatcher)")
        if self.nan_retries < 0:
            raise FlagError(f"--nan_retries={self.nan_retries} must be at least 0")
        if self.backbone_lr_scale <= 0:
            raise FlagError(f"--backbone_lr_scale={self.backbone_lr_scale} must be positive (--freeze_epochs "
                            "freezes the backbone)")
        if self.freeze_epochs and not self.init_checkpoint:
            raise FlagError(f"--freeze_epochs={self.freeze_epochs} freezes a backbone that --init_checkpoint "
                            "starts from earlier weights; none was given")
        if self.epochs is not None and self.freeze_epochs > self.epochs:
            raise FlagError(f"--freeze_epochs={self.freeze_epochs} is more than --epochs={self.epochs}")
        unknown = [name for name in self.formats if name not in EXPORT_FORMATS]
        if unknown:
            raise FlagError(f"--formats={','.join(self.formats)}: {', '.join(unknown)} unknown; choose from "
                            f"{', '.join(EXPORT_FORMATS)}")
        if len(self.mask_dirs) != 2:
            raise FlagError(f"--mask_dirs={','.join(self.mask_dirs)} must name two folders: IMAGES,MASKS")
        profile_batches(self.profile_steps)


def profile_batches(profile_steps: str) -> tuple[int, int] | int:
    """`--profile_steps=START,STOP` as Keras' TensorBoard callback takes it (0: no profile)."""
    if not profile_steps:
        return 0
    try:
        start, stop = (int(step) for step in profile_steps.split(","))
    except ValueError:
        raise FlagError(f"--profile_steps={profile_steps} must be two step numbers, START,STOP") from None
    if not 1 <= start <= stop:
        raise FlagError(f"--profile_steps={profile_steps} needs 1 <= START <= STOP")
    return start, stop


def default_cache_dir() -> str:
    """Where generated datasets live: $ENGINE_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /tfdata-engine."""
    if os.environ.get("ENGINE_CACHE_DIR"):
        return os.environ["ENGINE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfdata-engine")
