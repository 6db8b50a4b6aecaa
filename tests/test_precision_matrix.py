"""Every strategy x precision x XLA combination trains a tiny model of each task through the engine's own path:
a few steps on one fixed batch, the loss finite and falling, float32 variables and outputs, and loss scaling
under mixed_float16 (the upstream traps: keras-team/keras#20763 and #21366, LossScaleOptimizer under
MirroredStrategy)."""

import itertools

import keras
import numpy as np
import pytest

from engine import benchmark, fit, job as job_module
from engine.config import Config, FlagError

# task: (model, image size, epochs of 3 steps). YOLOv8's loss on one batch moves up and down by ~1 for its first
# dozen steps: under mirrored mixed_float16, 4 epochs ended above the start in some processes ([23.47, 23.47,
# 24.22, 24.75], also before fine-tuning landed) while 8 fell to [..., 18.75] (measured).
TASKS = {"classification": ("small_cnn", 32, 4), "segmentation": ("unet", 32, 4), "detection": ("yolov8_n", 32, 8)}
pytestmark = pytest.mark.slow  # 36 cases, about 6 minutes here
COMBINATIONS = list(itertools.product(TASKS, ["one_device", "mirrored"], ["float32", "mixed_float16",
                                                                          "mixed_bfloat16"], ["false", "true"]))


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


@pytest.mark.parametrize("task,strategy,precision,jit", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_tiny_model_trains_in_every_combination(tiny_shapes, tmp_path, task, strategy, precision, jit):
    model_name, image_size, epochs = TASKS[task]
    config = Config(task=task, dataset=f"shapes:{tiny_shapes}", model=model_name, image_size=image_size,
                    batch_size=16, strategy=strategy, precision=precision, jit_compile=jit, mode="train",
                    learning_rate=3e-3, warmup_epochs=0.0, lr_schedule="constant", preview_batches=0, verbose=0,
                    model_dir=str(tmp_path))
    if strategy == "mirrored" and jit == "true":  # XLA on CPU compiles for one device (engine/job.py)
        with pytest.raises(FlagError, match="--jit_compile=true cannot run on 2 virtual CPU devices"):
            job_module.prepare(config)
        return
    job = job_module.prepare(config)
    assert (job.numerics.precision, job.numerics.jit_compile) == (precision, jit == "true")
    model = fit.build_model(job)
    losses = model.fit(benchmark.one_batch_repeated(job), epochs=epochs, steps_per_epoch=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)), losses
    # Falls: under mixed_float16 the loss scale skips the first steps (float16 overflow); the few left on one
    # batch may overshoot at the end, so the lowest epoch loss is compared with the first.
    assert min(losses[1:]) < losses[0], losses
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    assert {keras.backend.standardize_dtype(v.dtype) for v in model.trainable_variables} == {"float32"}
    outputs = model(np.zeros((2, image_size, image_size, 3), np.uint8), training=False)
    assert {keras.backend.standardize_dtype(o.dtype) for o in keras.tree.flatten(outputs)} == {"float32"}
