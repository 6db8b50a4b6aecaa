"""Optimizer and learning-rate schedule (`--optimizer`, `--learning_rate`, `--lr_schedule`, `--ema_decay`,
`--grad_accum_steps`, `--backbone_lr_scale`)."""

from __future__ import annotations

import re

import keras

HEAD, BACKBONE = "head", "backbone"  # names of the two optimizers when the backbone learns at its own rate


def learning_rate_schedule(base_rate: float, schedule: str, warmup_steps: int, total_steps: int
                           ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to `base_rate` over `warmup_steps`, then cosine decay to 0 at `total_steps` (`schedule`
    "cosine") or flat ("constant")."""
    if schedule == "constant" and not warmup_steps:
        return base_rate
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    alpha = 1.0 if schedule == "constant" else 0.0
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps, alpha=alpha, warmup_target=base_rate,
                                                      warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(base_rate, decay_steps, alpha=alpha)


@keras.saving.register_keras_serializable(package="engine")
class UpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` (a schedule or a constant) counted in optimizer updates when each takes `accumulation`
    batches, starting `offset` updates into the run (a later phase's new optimizer counts from 0), times
    `scale` (the backbone's rate)."""

    def __init__(self, schedule, accumulation: int = 1, offset: int = 0, scale: float = 1.0):
        self.schedule, self.accumulation, self.offset, self.scale = schedule, accumulation, offset, scale

    def __call__(self, step):
        updates = step // self.accumulation + self.offset
        return self.scale * (self.schedule(updates) if callable(self.schedule) else self.schedule)

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "accumulation": self.accumulation,
                "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_config(cls, config: dict) -> UpdateSchedule:
        return cls(**{**config, "schedule": keras.saving.deserialize_keras_object(config["schedule"])})


def per_update(schedule, accumulation: int = 1, offset: int = 0, scale: float = 1.0):
    """`schedule` as UpdateSchedule, or unchanged when there is nothing to count differently."""
    return schedule if (accumulation, offset, scale) == (1, 0, 1.0) else UpdateSchedule(schedule, accumulation,
                                                                                       offset, scale)


def build_optimizer(name: str, learning_rate, weight_decay: float = 0.0, momentum: float = 0.9,
                    ema_decay: float = 0.0, accumulation: int = 1, label: str = HEAD) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum, Adam, or AdamW (`name`, one of config.OPTIMIZERS); weight decay skips biases
    and normalisation scales; with `ema_decay`, an exponential moving average of the weights (Keras' use_ema);
    with `accumulation` > 1, one update per that many batches' averaged gradients (Keras'
    gradient_accumulation_steps: the EMA then moves every batch)."""
    common = {"use_ema": bool(ema_decay), "ema_momentum": ema_decay or 0.99,
              "gradient_accumulation_steps": accumulation if accumulation > 1 else None, "name": label}
    optimizer = {
        "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True,
                                            weight_decay=weight_decay or None, **common),
        "adam": lambda: keras.optimizers.Adam(learning_rate, **common),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **common),
    }[name]()
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def split_optimizer(head: keras.optimizers.Optimizer, backbone: keras.optimizers.Optimizer,
                    backbone_paths: list[str]) -> keras.optimizers.Optimizer:
    """Keras' MultiOptimizer: `backbone` for the variables at `backbone_paths`, `head` for the others."""
    pattern = "|".join(re.escape(path) for path in backbone_paths)
    return keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(head, {pattern: backbone}))


def learning_rate_of(optimizer: keras.optimizers.Optimizer) -> float:
    """The current learning rate (of the head, when the backbone has its own)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under mixed_float16's loss scaling
    inner = [o for o in getattr(optimizer, "optimizers", [optimizer]) if o.name != BACKBONE]
    return float(inner[0].learning_rate)
