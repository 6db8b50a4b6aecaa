"""The tasks: `TASKS` maps each --task name (config.TASKS) to its class (the interface: `base.py`)."""

from __future__ import annotations

from typing import Sequence

from engine.config import Config
from engine.tasks.base import Task
from engine.tasks.classification import ClassificationTask
from engine.tasks.detection import DetectionTask
from engine.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, SegmentationTask, DetectionTask)}


def build(config: Config, class_names: Sequence[str]) -> Task:
    """The task `config.task` for `class_names`, with its defaults for the flags `config` left unset: how a
    trained model's task is rebuilt from its run's config.json (flags and class names)."""
    task = TASKS[config.task]
    return task(task.with_defaults(config), class_names)
