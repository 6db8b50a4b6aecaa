"""Fine-tuning: partial loading by layer path and shape, frozen and unfrozen phases, resuming in the right
phase, EMA weights in evaluation and checkpoints, gradient accumulation."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import REPO, run_launch
from engine import finetune, fit, optim, tasks
from engine.config import Config, FlagError
from engine.job import prepare

CLASSES = ["a", "b", "c", "d", "e"]
TINY = ["--image_size=32", "--batch_size=32", "--preview_batches=0", "--verbose=2", "--strategy=one_device",
        "--deterministic"]


def _task(init_checkpoint: str = "", classes: list[str] = CLASSES, **flags) -> tasks.Task:
    return tasks.build(Config(image_size=32, init_checkpoint=init_checkpoint, **flags), classes)


def _values(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy() for v in model.weights}


def test_partial_loading_keeps_the_backbone_and_starts_a_head_for_other_classes(tmp_path):
    source = _task().build_model()
    source.save(tmp_path / "source.keras")
    task = _task(str(tmp_path / "source.keras"), classes=list("abcdefg"))
    model = task.build_model()
    before, report = _values(model), finetune.initialise(model, task)
    saved, after = _values(source), _values(model)
    assert set(report.fresh) == {"logits/kernel", "logits/bias"}
    assert "shape (128, 7) here, (128, 5) in the checkpoint" in report.fresh["logits/kernel"]
    assert report.loaded == report.total - 2 == len(model.weights) - 2
    for path, value in after.items():
        if path.startswith("logits"):
            np.testing.assert_array_equal(value, before[path])  # the head keeps its initial values
        else:
            np.testing.assert_array_equal(value, saved[path])  # the backbone is the source's, BN statistics too
    assert not np.array_equal(before["stem_conv/kernel"], after["stem_conv/kernel"])


def test_a_weights_file_of_a_run_is_rebuilt_from_its_config_json(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    source_task = _task(classes=list("abc"))
    source = source_task.build_model()
    with open(run_dir / "config.json", "w") as f:  # what engine/job.py writes, and a flag of an older version
        json.dump({**dataclasses.asdict(source_task.config), "weights": "", "resolved": {"class_names": list("abc")}},
                  f)
    source.save_weights(run_dir / "backup" / "latest.weights.h5")
    task = _task(str(run_dir / "backup" / "latest.weights.h5"))
    model = task.build_model()
    report = finetune.initialise(model, task)
    assert set(report.fresh) == {"logits/kernel", "logits/bias"}
    np.testing.assert_array_equal(model.get_layer("stage3_b_conv").kernel.numpy(),
                                  source.get_layer("stage3_b_conv").kernel.numpy())


def test_checkpoints_that_cannot_seed_the_model_say_why(tmp_path):
    _task(model="resnet", classes=list("abc")).build_model().save(tmp_path / "resnet.keras")
    task = _task(str(tmp_path / "resnet.keras"))
    with pytest.raises(FlagError, match="none of the .* weights of --model=small_cnn matches"):
        finetune.initialise(task.build_model(), task)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FlagError, match="a directory without best.keras"):
        finetune.checkpoint_file(str(tmp_path / "empty_run"))
    with pytest.raises(FlagError, match="no such file"):
        finetune.checkpoint_file(str(tmp_path / "nothing.keras"))
    _task(classes=list("abc")).build_model().save_weights(tmp_path / "loose.weights.h5")
    loose = _task(str(tmp_path / "loose.weights.h5"))
    with pytest.raises(FlagError, match="holds no architecture"):
        finetune.initialise(loose.build_model(), loose)


@pytest.mark.parametrize("task_name, model_name, class_layers", [
    ("segmentation", "unet", {"logits"}),
    ("detection", "yolov8_n", {f"yolo_v8_head_{level}_class_3_conv" for level in (1, 2, 3)}),
])
def test_segmenters_and_detectors_seed_all_but_their_class_layers(tmp_path, task_name, model_name, class_layers):
    source = tasks.build(Config(task=task_name, model=model_name, image_size=64), list("abc")).build_model()
    source.save(tmp_path / "source.keras")
    task = tasks.build(Config(task=task_name, model=model_name, image_size=64,
                              init_checkpoint=str(tmp_path / "source.keras")), list("abcde"))
    model = task.build_model()
    report = finetune.initialise(model, task)
    assert {path.split("/")[0] for path in report.fresh} == class_layers
    saved = _values(source)
    for layer in task.backbone_layers(model):
        for variable in layer.weights:
            np.testing.assert_array_equal(variable.numpy(), saved[variable.path])


def _run(model_dir: str, *flags: str) -> subprocess.CompletedProcess:
    result = run_launch(*flags, f"--model_dir={model_dir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _history(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _backbone_and_head(model_dir: str, name: str = "final.keras") -> tuple[dict, dict]:
    values = _values(keras.saving.load_model(os.path.join(model_dir, name)))
    return ({p: v for p, v in values.items() if not p.startswith("logits")},
            {p: v for p, v in values.items() if p.startswith("logits")})


@pytest.fixture(scope="module")
def source_run(tiny_shapes, tmp_path_factory) -> str:
    """A small_cnn trained 2 epochs on the tiny shapes: the checkpoint the fine-tuning tests start from."""
    model_dir = str(tmp_path_factory.mktemp("source") / "run")
    _run(model_dir, f"--dataset=shapes:{tiny_shapes}", "--epochs=2")
    return model_dir


@pytest.mark.slow
def test_frozen_phase_keeps_the_backbone_and_unfrozen_phase_trains_it(source_run, tiny_shapes, tmp_path):
    data = f"--dataset=shapes:{tiny_shapes}"
    source_backbone, source_head = _backbone_and_head(source_run, "best.keras")
    frozen = str(tmp_path / "frozen")
    result = _run(frozen, data, f"--init_checkpoint={source_run}", "--freeze_epochs=2", "--epochs=2")
    assert "[init] 47 of 47 weight tensors" in result.stdout and "[phase] frozen: epochs 1-2" in result.stdout
    backbone, head = _backbone_and_head(frozen)
    for path, value in backbone.items():  # weights and BatchNormalization statistics: unchanged
        np.testing.assert_array_equal(value, source_backbone[path], err_msg=path)
    assert not np.array_equal(head["logits/kernel"], source_head["logits/kernel"])

    for flag, bn_moves in (("--notrain_backbone_bn", False), ("--train_backbone_bn", True)):
        unfrozen = str(tmp_path / f"unfrozen{bn_moves}")
        _run(unfrozen, data, f"--init_checkpoint={source_run}", "--freeze_epochs=1", "--epochs=2", flag)
        backbone, _ = _backbone_and_head(unfrozen)
        assert not np.array_equal(backbone["stage2_a_conv/kernel"], source_backbone["stage2_a_conv/kernel"])
        for path in ("stem_bn/moving_mean", "stage1_b_bn/moving_variance", "stage3_a_bn/gamma"):
            assert np.array_equal(backbone[path], source_backbone[path]) != bn_moves, (flag, path)
        with open(os.path.join(unfrozen, "config.json")) as f:
            phases = json.load(f)["resolved"]["phases"]
        assert [(p["name"], p["first_epoch"], p["end_epoch"], p["frozen_backbone"]) for p in phases] == [
            ("frozen", 0, 1, True), ("unfrozen", 1, 2, False)]


@pytest.mark.slow
def test_run_killed_in_the_unfrozen_phase_resumes_there(source_run, tiny_shapes, tmp_path):
    flags = [f"--dataset=shapes:{tiny_shapes}", f"--init_checkpoint={source_run}", "--freeze_epochs=2",
             "--epochs=5", "--backbone_lr_scale=0.1"]
    reference = str(tmp_path / "reference")
    _run(reference, *flags)
    killed = str(tmp_path / "killed")
    args = [sys.executable, os.path.join(REPO, "launch.py"), *flags, f"--model_dir={killed}", *TINY]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backup = os.path.join(killed, "backup")  # the unfrozen (last) phase's
    deadline = time.time() + 300
    # Killed once epoch 3's backup is written (the last of the epoch's files, after its history row)
    while time.time() < deadline and process.poll() is None and finetune.completed_epochs(backup) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = finetune.completed_epochs(backup)
    assert 3 <= done < 5, "the run must be killed in the unfrozen phase for this test to mean anything"
    result = _run(killed, *flags)
    assert "[phase] frozen" not in result.stdout and "[phase] unfrozen: epochs 3-5" in result.stdout
    assert f"Epoch {done + 1}/5" in result.stdout and f"Epoch {done}/5" not in result.stdout
    # The learning rate continues the one schedule, as in the run that was never killed ...
    assert [row["learning_rate"] for row in _history(killed)] == [row["learning_rate"] for row in _history(reference)]
    # ... and the frozen set is the same: the backbone's BatchNormalization kept the source's statistics.
    source_backbone, _ = _backbone_and_head(source_run, "best.keras")
    backbone, _ = _backbone_and_head(killed)
    np.testing.assert_array_equal(backbone["stage2_b_bn/moving_mean"], source_backbone["stage2_b_bn/moving_mean"])


def _evaluate(model_dir: str, weights: str) -> dict:
    """Validation metrics of `weights` in the run's own compiled model (the optimizer too, for a backup)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    saved.pop("resolved")
    job = prepare(dataclasses.replace(Config(**saved), mode="eval"))
    model = fit.build_model(job)
    with job.strategy.scope():
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return model.evaluate(job.dataset(training=False), verbose=0, return_dict=True)


@pytest.mark.slow
def test_ema_weights_are_evaluated_and_saved(tiny_shapes, tmp_path):
    model_dir = str(tmp_path / "ema")
    _run(model_dir, f"--dataset=shapes:{tiny_shapes}", "--epochs=3", "--ema_decay=0.9")
    history = _history(model_dir)
    last = float(history[-1]["val_loss"])
    best = max(history, key=lambda row: float(row["val_accuracy"]))  # the first epoch with the best accuracy
    # Validation scored the averaged weights, and they are what final.keras and best.keras hold ...
    assert _evaluate(model_dir, os.path.join(model_dir, "final.keras"))["loss"] == pytest.approx(last, rel=1e-4)
    assert _evaluate(model_dir, os.path.join(model_dir, "best.keras"))["loss"] == pytest.approx(
        float(best["val_loss"]), rel=1e-4)
    # ... while the backup keeps the raw weights training resumes from, which score differently.
    raw = _evaluate(model_dir, os.path.join(model_dir, "backup", "latest.weights.h5"))["loss"]
    assert abs(raw - last) > 1e-3 * last
    # A run killed after its last backup but before final.keras, run again, writes the averages, not the raw
    # weights it restores (it once wrote those).
    final = _values(keras.saving.load_model(os.path.join(model_dir, "final.keras")))
    os.remove(os.path.join(model_dir, "final.keras"))
    _run(model_dir, f"--dataset=shapes:{tiny_shapes}", "--epochs=3", "--ema_decay=0.9")
    again = _values(keras.saving.load_model(os.path.join(model_dir, "final.keras")))
    for path, value in final.items():
        np.testing.assert_allclose(again[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def _one_update(accumulation: int, batch_size: int) -> list[np.ndarray]:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(inputs)))
    model.compile(optim.build_optimizer("adamw", 0.01, weight_decay=0.1, accumulation=accumulation), "mse")
    data = np.random.default_rng(0).normal(size=(32, 9)).astype("float32")
    model.fit(data[:, :6], data[:, 6:], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_accumulating_k_batches_is_one_update_of_the_k_times_larger_batch():
    for accumulated, whole in zip(_one_update(4, 8), _one_update(1, 32)):
        np.testing.assert_allclose(accumulated, whole, rtol=0, atol=1e-6)  # float32: summation order only
    schedule = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=10)
    counted = optim.per_update(schedule, accumulation=4, offset=2, scale=0.5)
    assert [float(counted(step)) for step in (0, 3, 4, 11)] == pytest.approx(
        [0.5 * float(schedule(update)) for update in (2, 2, 3, 4)])
    assert optim.per_update(schedule) is schedule
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(counted))
    assert float(again(11)) == pytest.approx(float(counted(11)))
