"""The run planned from the data, for the flags left unset: input size, batch, run length and augmentation,
each with the reason; and warnings where explicit flags are far from what the data needs.

The rules (the task's part, input size and augmentation, is its `planned` method):
- batch: 64, halved per replica (down to `MIN_REPLICA_BATCH`) until a pass over the training data takes at
  least `MIN_PASS_STEPS` steps;
- cache (`--cache=auto`): in memory when train and val, decoded at their cached size, fit a quarter of physical
  memory, else none;
- --ema_decay, where the task plans one: off for runs of fewer than `EMA_MIN_UPDATES` optimizer updates;
- run length: the task's `min_steps` optimizer updates (a third of them with --init_checkpoint; each takes
  --grad_accum_steps batches), in epochs of at least
  `MIN_EPOCH_STEPS` steps (small data repeats within an epoch, so that validation, checkpoints and the
  learning-rate schedule keep their step) and at least `MIN_EPOCHS` epochs.
The generated shapes data gets the settings tuned on it: batch 64, 125-step epochs, 15 epochs (segmentation 20).
"""

from __future__ import annotations

import dataclasses
import math

from datasets.budget import physical_memory_bytes
from datasets.profile import PERCENTILE, Profile
from engine.config import Config, FlagError

BATCH = 64
MIN_PASS_STEPS = 8
MIN_REPLICA_BATCH = 2  # BatchNormalization needs more than one example
MIN_EPOCH_STEPS = 100
MIN_EPOCHS = 10
FINE_TUNING_SHARE = 1 / 3  # of the from-scratch steps, when --init_checkpoint starts the model
CACHE_SHARE = 0.25  # of physical memory, for --cache=auto's in-memory cache of train and val
TOO_SHORT = 0.25  # explicit run lengths below this share of the planned steps get a warning
EMA_MIN_UPDATES = 1000  # a planned --ema_decay is dropped from shorter runs: their average would lag the weights


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps make an epoch, and how many epochs make the run."""

    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return self.steps_per_epoch * self.epochs


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the data decided: flag values (for flags left unset), the steps, and why; warnings."""

    flags: dict[str, object]
    steps: StepPlan
    reasons: dict[str, str]
    warnings: list[str]

    def with_flag(self, key: str, value: object, why: str) -> Plan:
        """This plan with one more planned flag."""
        return dataclasses.replace(self, flags={**self.flags, key: value}, reasons={**self.reasons, key: why})

    def lines(self) -> list[str]:
        """The plan as printed: one line per decision, then the warnings."""
        return ([f"[plan] {key} {value}: {self.reasons[key]}" for key, value in self.flags.items()]
                + [f"[plan] {self.steps.epochs} epochs x {self.steps.steps_per_epoch} steps: {self.reasons['steps']}"]
                + [f"[plan] warning: {warning}" for warning in self.warnings])

    def describe(self) -> dict:
        """The plan for config.json."""
        return {"flags": self.flags, "steps_per_epoch": self.steps.steps_per_epoch, "epochs": self.steps.epochs,
                "total_steps": self.steps.total_steps, "reasons": self.reasons, "warnings": self.warnings}


def object_size(profile: Profile, object_px: float, multiple: int, budget: int) -> tuple[int, str]:
    """The input size (a multiple of `multiple`, at most `budget` and the images' own size) at which the
    profile's smallest objects keep about `object_px` pixels; and why."""
    largest = min(budget, -(-profile.longer_side // multiple) * multiple)
    if profile.smallest_object is None:
        return largest, f"images {profile.height}x{profile.width} (median), no labelled objects measured"
    wanted = object_px / profile.smallest_object
    size = int(min(largest, max(multiple, round(wanted / multiple) * multiple)))
    cap = "" if size >= wanted - multiple / 2 else (
        f", capped by {'the budget' if largest == budget else 'the images'} at {largest}")
    return size, (f"the smallest objects ({profile.smallest_class}, {PERCENTILE}th percentile) are "
                  f"{profile.smallest_object:.1%} of the images' longer side ({profile.longer_side} px): "
                  f"{profile.smallest_object * size:.0f} px at {size}, about {object_px} wanted{cap}")


def _batch(profile: Profile, replicas: int) -> tuple[int, str]:
    per_replica = max(1, BATCH // replicas)
    while profile.num_train < MIN_PASS_STEPS * per_replica * replicas and per_replica > MIN_REPLICA_BATCH:
        per_replica //= 2
    batch = per_replica * replicas
    why = f"{profile.num_train} training examples: {profile.num_train // batch} steps a pass"
    return batch, why if batch * 2 > BATCH else f"{why} (halved from {BATCH} to reach {MIN_PASS_STEPS})"


def steps(num_train: int, batch_size: int, epochs: int | None, train_steps: int, min_steps: int,
          steps_per_execution: int = 1) -> tuple[StepPlan, str]:
    """The step plan: `train_steps` or `epochs` when given (natural epochs), else at least `min_steps` steps in
    epochs of at least MIN_EPOCH_STEPS steps and at least MIN_EPOCHS epochs; epochs are whole executions of
    `steps_per_execution` steps (Keras runs whole ones, past an epoch's end); and why."""
    if steps_per_execution > 1:
        plan, why = steps(num_train, batch_size, epochs, train_steps, min_steps)
        whole = max(steps_per_execution, plan.steps_per_epoch // steps_per_execution * steps_per_execution)
        if whole == plan.steps_per_epoch:
            return plan, why
        return (dataclasses.replace(plan, steps_per_epoch=whole),
                f"{why}; {whole} steps an epoch, whole executions of --steps_per_execution={steps_per_execution}")
    natural = num_train // batch_size
    if natural < 1:
        raise FlagError(f"--batch_size={batch_size} exceeds the {num_train} training examples")
    if train_steps > 0:
        run_epochs = math.ceil(train_steps / natural)
        return StepPlan(math.ceil(train_steps / run_epochs), run_epochs), f"--train_steps={train_steps}"
    if epochs is not None:
        return StepPlan(natural, epochs), f"--epochs={epochs} passes of {natural} steps"
    per_epoch = max(natural, MIN_EPOCH_STEPS)
    run_epochs = max(MIN_EPOCHS, math.ceil(min_steps / per_epoch))
    repeats = "" if per_epoch == natural else f" (the data {per_epoch / natural:.1f} times: {natural} steps a pass)"
    return StepPlan(per_epoch, run_epochs), (f"at least {min_steps} optimizer steps{repeats}, "
                                             f"at least {MIN_EPOCHS} epochs")


def _warnings(config: Config, planned_size: tuple[object, str] | None, profile: Profile, total_steps: int,
              needed: int, steps_why: str) -> list[str]:
    """Where explicit flags are far from what the data needs: input size and run length."""
    found = []
    if config.image_size is not None and planned_size and config.image_size < planned_size[0] / 2:
        found.append(f"--image_size={config.image_size} is under half the {planned_size[0]} the data asks for "
                     f"({planned_size[1]})")
    if config.image_size is not None and config.image_size > 2 * profile.longer_side:
        found.append(f"--image_size={config.image_size} upscales the {profile.height}x{profile.width} images more "
                     "than twice")
    if total_steps < TOO_SHORT * needed:
        found.append(f"{total_steps} optimizer steps ({steps_why}) is far from the ~{needed} a "
                     f"{'fine-tuning' if config.init_checkpoint else 'from-scratch'} {config.task} run needs; leave --epochs "
                     "and --train_steps unset to have them planned")
    return found


def cache(config: Config, num_examples: int, pixels_in_memory: bool, masks: bool) -> tuple[str, str]:
    """`--cache=auto` resolved for a run of `num_examples` (train and val) at `config.image_size`: memory when
    they fit CACHE_SHARE of physical memory at the largest size a recipe caches (8/7 of the input size), else
    none; and why."""
    if pixels_in_memory:
        return "none", "the images are decoded pixels in memory already"
    side = round(config.image_size * 8 / 7)
    needed = num_examples * side * side * (4 if masks else 3)
    budget = int(physical_memory_bytes() * CACHE_SHARE)
    fits = needed <= budget
    return ("memory" if fits else "none"), (
        f"{num_examples} images decoded at up to {side} px take up to {needed / (1 << 20):.0f} MB, "
        f"{'within' if fits else 'over'} the budget of {budget / (1 << 20):.0f} MB ({CACHE_SHARE:.0%} of memory)")


def dct_decode(profile: Profile, image_size: int | None) -> tuple[bool, str]:
    """Whether training decodes JPEGs at a DCT scale: when a sampled image is at least twice `image_size` (a
    1/2 scale could apply). Else the per-image choice is control flow that never picks a scale and cost ~10% of
    the plain crop pipeline (BUILD.md); and why."""
    if profile.largest_side is None or image_size is None:
        return True, "image sizes not measured"
    needed = profile.largest_side >= 2 * image_size
    return needed, (f"the largest sampled image, {profile.largest_side} px, is {'at least' if needed else 'under'} "
                    f"twice the input size {image_size}")


def make(config: Config, min_steps: int, planned: dict[str, tuple[object, str]], profile: Profile,
         replicas: int) -> Plan:
    """The plan for `config` (flags as given): the task's `planned` values and a batch for the flags left unset,
    and the step plan for a task whose from-scratch runs need `min_steps` steps."""
    flags, reasons = {}, {}
    for key, (value, why) in planned.items():
        if getattr(config, key) is None:
            flags[key], reasons[key] = value, why
    if config.batch_size is None:
        flags["batch_size"], reasons["batch_size"] = _batch(profile, replicas)
    if config.dct_decode is None:
        flags["dct_decode"], reasons["dct_decode"] = dct_decode(profile, flags.get("image_size", config.image_size))
    needed = round(min_steps * (FINE_TUNING_SHARE if config.init_checkpoint else 1)) * config.grad_accum_steps
    batch_size = flags.get("batch_size", config.batch_size)
    step_plan, reasons["steps"] = steps(profile.num_train, batch_size, config.epochs, config.train_steps, needed,
                                        config.steps_per_execution)
    updates = step_plan.total_steps // config.grad_accum_steps
    if flags.get("ema_decay") and updates < EMA_MIN_UPDATES:
        flags["ema_decay"], reasons["ema_decay"] = 0.0, (f"{updates} optimizer updates, under the {EMA_MIN_UPDATES} "
                                                         "an average of the weights needs to catch up with them")
    warnings = _warnings(config, planned.get("image_size"), profile, step_plan.total_steps, needed, reasons["steps"])
    return Plan(flags, step_plan, reasons, warnings)
