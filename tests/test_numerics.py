"""Device-aware precision/XLA defaults, strategy errors and replicated evaluation."""

import os
import subprocess
import sys

import numpy as np
import pytest
import keras

from datasets import pipeline
from datasets.recipes import ClassificationRecipe
from datasets.sources import shapes
from engine import devices, precision, tasks
from engine.config import Config, FlagError

CPU = devices.DeviceInfo("CPU", ("/cpu:0",))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("device, expected", [
    (CPU, ("float32", False)),
    (devices.DeviceInfo("CPU", ("/cpu:0",), cpu_bf16=True), ("float32", False)),
    (devices.DeviceInfo("GPU", ("/gpu:0",), (8, 0)), ("mixed_float16", True)),
    (devices.DeviceInfo("GPU", ("/gpu:0",), (6, 1)), ("float32", True)),
    (devices.DeviceInfo("TPU", ("/tpu:0",)), ("mixed_bfloat16", True)),
])
def test_auto_numerics_follow_the_device(device, expected):
    resolved = precision.resolve("auto", "auto", device, "small_cnn")
    assert (resolved.precision, resolved.jit_compile) == expected
    assert "auto ->" in resolved.reason


def test_cpu_bf16_only_for_models_measured_faster_with_it():
    bf16_cpu = devices.DeviceInfo("CPU", ("/cpu:0",), cpu_bf16=True)
    assert precision.resolve("auto", "auto", bf16_cpu, "resnet").precision == "mixed_bfloat16"
    assert precision.resolve("auto", "auto", bf16_cpu, "mobilenet_v3_small").precision == "float32"
    assert precision.resolve("auto", "auto", CPU, "resnet").precision == "float32"


def test_explicit_flags_win_over_auto():
    resolved = precision.resolve("mixed_bfloat16", "true", CPU)
    assert (resolved.precision, resolved.jit_compile) == ("mixed_bfloat16", True)


@pytest.mark.parametrize("flags, named", [({"precision": "float64"}, "--precision=float64"),
                                          ({"jit_compile": "maybe"}, "--jit_compile=maybe")])
def test_unknown_numerics_name_the_flag(flags, named):
    with pytest.raises(FlagError, match=f"{named} is unknown; choose one of auto, "):
        Config(**flags)


def test_unknown_strategy_and_uneven_batch_are_errors():
    with pytest.raises(FlagError, match="--strategy=bogus is unknown"):
        Config(strategy="bogus")
    with pytest.raises(devices.StrategyError, match="--strategy=bogus"):
        devices.build_strategy("bogus")
    strategy, _ = devices.build_strategy("mirrored", cpu_replicas=2)
    assert strategy.num_replicas_in_sync == 2
    assert devices.check_batch_size(64, strategy) == 32
    with pytest.raises(devices.StrategyError, match="--batch_size=7"):
        devices.check_batch_size(7, strategy)


def test_mirrored_evaluation_equals_single_device_evaluation(tiny_shapes):
    """Metrics reduce across replicas: the replicated pass must score the same weights identically."""
    source = shapes.shapes_source(tiny_shapes)
    task = tasks.build(Config(image_size=32), source.class_names)
    config = pipeline.PipelineConfig(ClassificationRecipe(32), global_batch_size=10, training=False)  # 64 = 6x10+4
    keras.utils.set_random_seed(0)
    weights = task.build_model().get_weights()
    steps = pipeline.eval_steps(64, 10)
    results = {}
    for name in ("one_device", "mirrored"):
        strategy, _ = devices.build_strategy(name, cpu_replicas=2)
        with strategy.scope():
            model = task.build_model()
            model.set_weights(weights)
            model.compile(**task.compile_args())
        data = strategy.distribute_datasets_from_function(
            pipeline.make_input_fn(source.splits["val"], config, task.model_io))
        results[name] = model.evaluate(data, steps=steps, verbose=0, return_dict=True)
    batches = list(pipeline.build_dataset(source.splits["val"], config).take(pipeline.eval_steps(64, 10)))
    weights_of = np.concatenate([b["weight"].numpy() for b in batches])
    assert weights_of.sum() == 64 and len(weights_of) == 70, "padded to 7 full batches, padding weighs 0"
    images = np.concatenate([b["image"].numpy() for b in batches])[weights_of > 0]
    keras.utils.set_random_seed(0)
    reference = task.build_model()
    reference.set_weights(weights)
    expected = float(np.mean(reference.predict(images, verbose=0).argmax(-1) == source.splits["val"].labels))
    assert results["one_device"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    assert results["mirrored"]["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_mirrored_on_the_cpu_gives_each_replica_its_share_of_the_cores():
    """A fresh process (as launch.py) running --strategy=mirrored on 2 virtual CPU devices uses cores // 2
    threads per op; one_device keeps TensorFlow's default (0: all cores)."""
    code = ("import sys, tensorflow as tf; from engine import devices; devices.build_strategy(sys.argv[1], 2); "
            "print(tf.config.threading.get_intra_op_parallelism_threads())")
    cores = len(os.sched_getaffinity(0))
    threads = {name: subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, check=True,
                                    cwd=ROOT).stdout.split()[-1] for name in ("mirrored", "one_device")}
    assert threads == {"mirrored": str(max(1, cores // 2)), "one_device": "0"}
