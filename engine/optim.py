"""Optimizer and learning-rate schedule (`--optimizer`, `--learning_rate`, `--lr_schedule`, ...)."""

from __future__ import annotations

import keras


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


def build_optimizer(name: str, learning_rate, weight_decay: float = 0.0, momentum: float = 0.9
                    ) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum, Adam, or AdamW (`name`, one of config.OPTIMIZERS); weight decay skips biases
    and normalisation scales."""
    optimizer = {
        "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True,
                                            weight_decay=weight_decay or None),
        "adam": lambda: keras.optimizers.Adam(learning_rate),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
    }[name]()
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer
