"""Learning-rate schedule, optimizers and the step plan."""

import keras
import numpy as np
import pytest

from engine import optim
from engine.config import Config, FlagError
from engine.plan import steps as plan_steps


def _rate(schedule, step):
    return float(np.asarray(schedule(step))) if callable(schedule) else schedule


def test_warmup_then_cosine_to_zero():
    schedule = optim.learning_rate_schedule(0.1, "cosine", warmup_steps=10, total_steps=110)
    assert _rate(schedule, 0) == pytest.approx(0.0)
    assert _rate(schedule, 5) == pytest.approx(0.05, rel=1e-3)
    assert _rate(schedule, 10) == pytest.approx(0.1, rel=1e-3)
    assert _rate(schedule, 60) == pytest.approx(0.05, rel=1e-2)
    assert _rate(schedule, 110) == pytest.approx(0.0, abs=1e-6)


def test_constant_schedule_with_warmup_stays_flat_after_it():
    schedule = optim.learning_rate_schedule(0.01, "constant", warmup_steps=4, total_steps=100)
    assert _rate(schedule, 2) == pytest.approx(0.005, rel=1e-3)
    assert _rate(schedule, 50) == pytest.approx(0.01) and _rate(schedule, 100) == pytest.approx(0.01)
    assert optim.learning_rate_schedule(0.01, "constant", 0, 100) == 0.01


def test_weight_decay_skips_biases_and_norm_parameters():
    optimizer = optim.build_optimizer("adamw", 1e-3, weight_decay=0.1)
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    norm = keras.layers.BatchNormalization()
    norm.build((None, 3))
    decayed = {v.path for v in layer.trainable_weights + norm.trainable_weights if optimizer._use_weight_decay(v)}
    assert decayed == {layer.kernel.path}


@pytest.mark.parametrize("name, kind", [("sgd", keras.optimizers.SGD), ("adam", keras.optimizers.Adam),
                                        ("adamw", keras.optimizers.AdamW)])
def test_optimizer_names(name, kind):
    assert isinstance(optim.build_optimizer(name, 1e-3), kind)


def test_unknown_optimizer_and_schedule_name_the_flag():
    with pytest.raises(FlagError, match="--optimizer=lion is unknown; choose one of sgd, adam, adamw"):
        Config(optimizer="lion")
    with pytest.raises(FlagError, match="--lr_schedule=step"):
        Config(lr_schedule="step")


def test_step_plan_honours_explicit_epochs_and_steps():
    plan, _ = plan_steps(1000, 64, epochs=3, train_steps=0, min_steps=2000)
    assert (plan.steps_per_epoch, plan.epochs) == (15, 3)
    plan, _ = plan_steps(1000, 64, epochs=3, train_steps=40, min_steps=2000)
    assert plan.epochs == 3 and plan.total_steps >= 40 and plan.total_steps - 40 < plan.epochs
    plan, _ = plan_steps(1000, 64, epochs=3, train_steps=5, min_steps=2000)
    assert (plan.steps_per_epoch, plan.epochs) == (5, 1)
    with pytest.raises(FlagError, match="--batch_size=64 exceeds the 10 training examples"):
        plan_steps(10, 64, 1, 0, 2000)
