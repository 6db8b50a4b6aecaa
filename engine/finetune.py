"""Fine-tuning: a model started from earlier weights (`--init_checkpoint`), and the phases of a run
(`--freeze_epochs` with the backbone frozen, then the whole model with the backbone at `--backbone_lr_scale`).

Weights are matched by variable path (`layer/variable`, e.g. `stage1_a_conv/kernel`) and shape, so a model
with another class count, or a detector or segmenter trained on other data, seeds everything but its
class-dependent layers. A run's phases each keep their own backup directory (the last one's is
`backup/`), so a restarted run resumes in the phase it was killed in.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import keras
import tensorflow as tf

from engine import files, tasks
from engine.run_dir import run_config
from engine.config import Config, FlagError
from engine.tasks.base import Task

IMAGENET = "imagenet"


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """Where a model's starting weights came from: how many tensors were loaded, and which were not (why)."""

    source: str
    loaded: int
    total: int
    fresh: dict[str, str]  # variable path -> why it kept its initial value

    def describe(self) -> dict:
        """For config.json and summary.json."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The printed report."""
        fresh = "".join(f"\n  {path}: {why}" for path, why in self.fresh.items())
        return (f"[init] {self.loaded} of {self.total} weight tensors from {self.source}; "
                f"{len(self.fresh)} left at their initial values{':' if fresh else ''}{fresh}")


def checkpoint_file(init_checkpoint: str) -> str:
    """The weights file `--init_checkpoint` names: the file itself, or a run directory's best.keras."""
    path = init_checkpoint
    if tf.io.gfile.isdir(path):
        path = os.path.join(path, "best.keras")
        if not tf.io.gfile.exists(path):
            raise FlagError(f"--init_checkpoint={init_checkpoint} is a directory without best.keras (a run "
                            "directory of this engine has one after its first validated epoch)")
    if not tf.io.gfile.exists(path):
        raise FlagError(f"--init_checkpoint={init_checkpoint}: no such file or directory")
    if not path.endswith((".keras", ".weights.h5")):
        raise FlagError(f"--init_checkpoint={init_checkpoint} must be a run directory, a .keras or .weights.h5 "
                        f"file, or {IMAGENET}")
    return path


def _checkpoint_model(path: str) -> keras.Model:
    """The model saved in `path`: rebuilt from its run's config.json (beside it, or above backup/) and loaded,
    else (a .keras file from elsewhere) deserialised."""
    for run_dir in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        found = run_config(run_dir)
        if found:
            config, class_names = found
            config = dataclasses.replace(config, init_checkpoint="", freeze_epochs=0)  # its architecture only
            model = tasks.build(config, class_names).build_model()
            with warnings.catch_warnings():  # a backup also holds the optimizer, which this model has not
                warnings.simplefilter("ignore")
                model.load_weights(path)
            return model
    if path.endswith(".weights.h5"):
        raise FlagError(f"--init_checkpoint={path}: a .weights.h5 file holds no architecture and no config.json "
                        "of its run is beside it or above it; pass the run directory or a .keras file")
    return keras.saving.load_model(path, compile=False)


def initialise(model: keras.Model, task: Task) -> Initialisation:
    """Loads into `model` every weight of `--init_checkpoint` whose variable path and shape match; the rest
    keep their initial values. Raises FlagError when nothing matches."""
    init_checkpoint = task.config.init_checkpoint
    if init_checkpoint == IMAGENET:  # built with the backbone's ImageNet weights (classification.application)
        backbone = {id(v) for layer in task.backbone_layers(model) for v in layer.weights}
        return Initialisation("keras.applications ImageNet weights", len(backbone), len(model.weights),
                              {v.path: "not part of the ImageNet backbone" for v in model.weights
                               if id(v) not in backbone})
    path = checkpoint_file(init_checkpoint)
    saved = {v.path: v for v in _checkpoint_model(path).weights}
    loaded, fresh = 0, {}
    for variable in model.weights:
        value = saved.get(variable.path)
        if value is None:
            fresh[variable.path] = "not in the checkpoint"
        elif tuple(value.shape) != tuple(variable.shape):
            fresh[variable.path] = f"shape {tuple(variable.shape)} here, {tuple(value.shape)} in the checkpoint"
        else:
            variable.assign(value.numpy())
            loaded += 1
    if not loaded:
        raise FlagError(f"--init_checkpoint={init_checkpoint}: none of the {len(model.weights)} weights of "
                        f"--model={task.config.model} matches one of the checkpoint's {len(saved)} by layer path "
                        f"and shape (it holds e.g. {', '.join(list(saved)[:3])}); is it a model of this kind?")
    return Initialisation(path, loaded, len(model.weights), fresh)


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [first_epoch, end_epoch) of a run, trained with the backbone frozen or not."""

    name: str
    first_epoch: int
    end_epoch: int
    frozen_backbone: bool

    def describe(self) -> dict:
        """For config.json."""
        return dataclasses.asdict(self)


def phases(config: Config, epochs: int) -> list[Phase]:
    """The run's phases: with --freeze_epochs=N, N epochs with the backbone frozen, then the rest unfrozen."""
    if config.freeze_epochs > epochs:
        raise FlagError(f"--freeze_epochs={config.freeze_epochs} is more than the run's {epochs} epochs")
    if not config.freeze_epochs:
        return [Phase("train", 0, epochs, False)]
    frozen = Phase("frozen", 0, config.freeze_epochs, True)
    return [frozen] + ([Phase("unfrozen", config.freeze_epochs, epochs, False)] if config.freeze_epochs < epochs
                       else [])


def backup_dir(run_backup: str, phase: Phase, last: bool) -> str:
    """The phase's backup directory under a worker's `run_backup` (`backup`, the last phase's)."""
    return run_backup if last else f"{run_backup}_{phase.name}"


def completed_epochs(backup: str) -> int:
    """Epochs of the run that a backup directory (engine/recovery.py) says are done (0 when it holds none)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(files.read_json(os.path.join(backup, name))["epoch"])
        except (tf.errors.OpError, ValueError, KeyError):
            continue
    return 0


def _layers_within(layer: keras.layers.Layer):
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _layers_within(inner)


def set_trainable(model: keras.Model, task: Task, phase: Phase) -> None:
    """Freezes the backbone in a frozen phase (and unfreezes it in the next). BatchNormalization of a backbone
    started from a checkpoint stays frozen (inference mode) in every phase unless --train_backbone_bn.
    Compile afterwards."""
    backbone = task.backbone_layers(model)
    for layer in backbone:
        layer.trainable = not phase.frozen_backbone  # Keras sets the layers inside a nested model alike
    if task.config.init_checkpoint and not task.config.train_backbone_bn:
        for layer in backbone:
            for inner in _layers_within(layer):
                if isinstance(inner, keras.layers.BatchNormalization):
                    inner.trainable = False


def backbone_variable_paths(model: keras.Model, task: Task) -> list[str]:
    """Paths of the backbone's trainable variables (those --backbone_lr_scale slows)."""
    return [v.path for layer in task.backbone_layers(model) for v in layer.trainable_weights]
