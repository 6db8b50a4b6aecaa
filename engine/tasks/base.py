"""The Task interface: the single-replica view of a problem (defaults, model, loss, metrics, evaluators, the
pipeline's recipe, the model's view of a batch, predictions and their drawing).

A task knows nothing of strategies, loops or files; the engine (`engine/job.py`, `engine/fit.py`) runs any
task the same way. A task is built from its class names and the run's flags (what a run's config.json
holds), so a trained model's task can be rebuilt without its data; what the engine derives from the data
(detection's boxes per image) enters through `from_source`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Sequence

import keras
import numpy as np
import tensorflow as tf

from datasets import profile as data_profile
from datasets.ops import decode
from datasets.recipes import Augment, Recipe
from datasets.sources.base import Source, Targets
from engine.config import Config


class Task(abc.ABC):
    """One kind of problem. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]  # the --task value
    default_model: ClassVar[str]  # --model when not given
    best_metric: ClassVar[str]  # the validation metric that picks the best checkpoint (higher is better)
    min_steps: ClassVar[int]  # optimizer steps a from-scratch run needs: the length of a planned run (plan.py)
    per_class: ClassVar[tuple[str, str] | None] = None  # (metric, title): logs hold val_<metric>_<class>
    draws_overlays: ClassVar[bool] = False  # `predict` and `draw` show validation images with predictions

    def __init__(self, config: Config, class_names: Sequence[str]):
        """`config`: the run's flags with this task's defaults (`with_defaults`); `class_names` in label order."""
        self.config = config
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @classmethod
    @abc.abstractmethod
    def defaults(cls, model: str) -> dict[str, object]:
        """The values of the flags left unset (None) for `model` that do not depend on the data (`planned`
        gives those that do): the one place a task's defaults live."""

    @classmethod
    @abc.abstractmethod
    def planned(cls, config: Config, profile: data_profile.Profile) -> dict[str, tuple[object, str]]:
        """What the data asks of the flags this task plans (input size, augmentation): {flag: (value, why)}.
        engine/plan.py uses the values of the flags left unset and warns where given ones are far off."""

    @classmethod
    def profile(cls, source: Source, config: Config) -> data_profile.Profile:
        """The training split measured for planning, with the labels this task learns."""
        return data_profile.measure(source.splits["train"], cls.profile_targets(source),
                                    cls.class_names_of(source, config), config.ignore_value)

    @classmethod
    def profile_targets(cls, source: Source) -> Targets:
        """The labels the profile measures objects of: none (image labels)."""
        return Targets()

    @classmethod
    def with_defaults(cls, config: Config) -> Config:
        """A copy of `config` with the task's defaults for the flags it left unset."""
        model = config.model or cls.default_model
        unset = {key: value for key, value in {"model": model, **cls.defaults(model)}.items()
                 if getattr(config, key) is None}
        return dataclasses.replace(config, **unset)

    @classmethod
    @abc.abstractmethod
    def class_names_of(cls, source: Source, config: Config) -> list[str]:
        """The names of the classes this task learns from `source`; raises FlagError if it has no such labels."""

    @classmethod
    def from_source(cls, config: Config, source: Source) -> Task:
        """The task for the labels of `source`, `config` given `with_defaults`."""
        return cls(config, cls.class_names_of(source, config))

    @abc.abstractmethod
    def augment(self) -> Augment:
        """Training augmentation from the flags."""

    def dct_ratios(self, training: bool) -> tuple[int, ...]:
        """The JPEG DCT scales decoding may use: training's as --dct_decode plans them; evaluation (and
        serving, which reuses it) always all of them."""
        return decode.DCT_RATIOS if not training or self.config.dct_decode is not False else ()

    @abc.abstractmethod
    def recipe(self, training: bool) -> Recipe:
        """What the input pipeline does for this task; its `preprocess()` is evaluation's (and serving's)."""

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The model of --model at --image_size (with ImageNet weights for --init_checkpoint=imagenet)."""

    @abc.abstractmethod
    def backbone_layers(self, model: keras.Model) -> list[keras.layers.Layer]:
        """The layers of `model` that --freeze_epochs freezes and --backbone_lr_scale slows."""

    @abc.abstractmethod
    def compile_args(self) -> dict:
        """The loss and metric arguments of `model.compile` (call in the strategy's scope)."""

    @abc.abstractmethod
    def model_io(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """Maps a pipeline batch to what `Model.fit` consumes."""

    def evaluators(self, dataset_fn, output_dir: str | None) -> list[keras.callbacks.Callback]:
        """Evaluations outside the compiled metrics, run after each validated epoch: none."""
        return []

    def summary(self, logs: dict) -> dict:
        """`val_per_class_<metric>` {class: value} from an epoch's logs, for tasks with per-class metrics."""
        if self.per_class is None:
            return {}
        metric = self.per_class[0]
        return {f"val_per_class_{metric}": {name: logs.get(f"val_{metric}_{name}") for name in self.class_names}}

    def predict(self, model: keras.Model, images: np.ndarray):
        """The model's outputs for a batch of images, as `draw` takes them."""
        return np.asarray(model(images, training=False))

    def draw(self, batch: dict, predicted) -> np.ndarray:
        """One picture per image of `batch`: its true labels (left) and the `predicted` ones (right), with class
        names (enlarged small images; segmentation adds a legend below)."""
        raise NotImplementedError(f"the {self.name} task draws no overlays")

    @abc.abstractmethod
    def report(self, model: keras.Model, dataset: tf.data.Dataset, folder: str) -> dict:
        """Writes the task's evaluation report of `model` over `dataset` (evaluation batches of the whole
        validation split, padding examples with "weight" 0) into `folder` (PNG plots, CSV/JSON tables);
        returns its numbers for eval.json (engine/report.py)."""

    # Serving (engine/serving.py): a prediction is the model's `serving_core` on preprocessed pixels (what every
    # export format computes), then `serving_finish` back in the original image's coordinates.

    @abc.abstractmethod
    def serving_core(self, model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The model's float32 outputs for uint8 `images` [B, S, S, 3] at its input size, in ops that TFLite
        builtins and ONNX convert."""

    @abc.abstractmethod
    def serving_finish(self, core: dict[str, tf.Tensor], original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """The predictions from `core` outputs, in the pixels of images of `original_size` [B, 2] (h, w) that
        `recipe(False).preprocess()` fitted to the input."""

    @abc.abstractmethod
    def agreement(self, reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
        """How closely `other` predictions (of an exported artifact) match `reference` ones (of the Keras
        model) on the same images: {metric: value}; `parity_limits` bounds them per precision."""

    # {metric of `agreement`: (">=" or "<=", {precision: limit})}: an export format whose metric is on the wrong
    # side of its precision's limit fails the export (engine/export.py).
    parity_limits: ClassVar[dict[str, tuple[str, dict[str, float]]]] = {}
