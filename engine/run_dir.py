"""A run directory as the rest of a model's life reads it: its config.json (flags and class names) and its
checkpoints, rebuilt into the task and the trained model without the data (fine-tuning, export, predict)."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import keras
import tensorflow as tf

from engine import files, tasks
from engine.config import Config, FlagError
from engine.tasks.base import Task

CHECKPOINTS = {"best": "best.keras", "final": "final.keras"}  # --checkpoint: the file of each choice


def run_config(run_dir: str) -> tuple[Config, list[str]] | None:
    """The flags (with the task's defaults) and class names a run's config.json holds, or None without one.
    Flags this version does not know (renamed or removed since the run) are left out."""
    path = os.path.join(run_dir, "config.json")
    if not tf.io.gfile.exists(path):
        return None
    saved = files.read_json(path)
    return config_from_dict(saved), saved["resolved"]["class_names"]


def config_from_dict(saved: dict) -> Config:
    """The Config of saved flags (config.json, an export's metadata.json), leaving out the flags this version
    does not know (renamed or removed since)."""
    known = {field.name for field in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in saved.items() if k in known})


def trained_model(run_dir: str, checkpoint: str = "best") -> tuple[Task, keras.Model, str]:
    """The task of the run in `run_dir`, its model with the weights of `checkpoint` (best or final; with
    --ema_decay both hold the averaged weights), and the weights file."""
    found = run_config(run_dir)
    if found is None:
        raise FlagError(f"--model_dir={run_dir} has no config.json: not a run directory of this engine")
    path = os.path.join(run_dir, CHECKPOINTS[checkpoint])
    if not tf.io.gfile.exists(path):
        raise FlagError(f"--checkpoint={checkpoint}: {path} does not exist (best.keras is written after the first "
                        "validated epoch, final.keras when training ends)")
    config, class_names = found
    task = tasks.build(dataclasses.replace(config, init_checkpoint="", freeze_epochs=0), class_names)
    model = task.build_model()
    model.load_weights(path)
    changed = architecture_changes(model, path)
    if changed:
        raise FlagError(f"{path} was trained with another version of --model={config.model} than this code builds "
                        f"({'; '.join(changed[:3])}): its weights fit the shapes but not the network; "
                        "retrain, or use the engine version it was trained with")
    return task, model, path


ARCHITECTURE_KEYS = ("strides", "kernel_size", "filters", "units", "padding", "dilation_rate", "pool_size")


def _layer_settings(node, found: dict) -> dict:
    """Every layer named in a serialised Keras config: name -> (class, the ARCHITECTURE_KEYS it has)."""
    if isinstance(node, dict):
        config = node.get("config")
        if isinstance(config, dict) and "class_name" in node and "name" in config:
            found[config["name"]] = (node["class_name"], {k: config[k] for k in ARCHITECTURE_KEYS if k in config})
        for value in node.values():
            _layer_settings(value, found)
    elif isinstance(node, list):
        for value in node:
            _layer_settings(value, found)
    return found


def architecture_changes(model: keras.Model, keras_file: str) -> list[str]:
    """The layers of `model` whose class, strides, kernel, width or padding differ from the same-named layers
    saved in `keras_file`: weights of the same shapes load into a changed network without an error."""
    with tf.io.gfile.GFile(keras_file, "rb") as file, zipfile.ZipFile(file) as archive:
        saved = _layer_settings(json.loads(archive.read("config.json")), {})
    built = _layer_settings(json.loads(json.dumps(keras.saving.serialize_keras_object(model))), {})
    changes = []
    for name in sorted(saved.keys() & built.keys()):
        (saved_class, saved_keys), (built_class, built_keys) = saved[name], built[name]
        if saved_class != built_class:
            changes.append(f"layer {name}: a {saved_class} in the file, a {built_class} here")
        changes += [f"layer {name}: {key} {saved_keys.get(key)} in the file, {built_keys.get(key)} here"
                    for key in ARCHITECTURE_KEYS if saved_keys.get(key) != built_keys.get(key)]
    return changes
