"""Resolves `--precision` and `--jit_compile`, including their device-aware `auto` defaults.

The `auto` choices follow measurements (benchmarks/train_step.py; BUILD.md, "Precision and XLA defaults"):
- CPU: no XLA (0.09-0.80x for every model measured). float32, except mixed_bfloat16 for the models in
  `CPU_BF16_MODELS` on CPUs with bfloat16 instructions: plain 3x3-conv stacks gain (resnet 1.23x), depthwise
  models lose (MobileNetV3) and small_cnn is even (1.06x, within noise).
- GPU: mixed_float16 with XLA on compute capability >= 7.0 (tensor cores); float32 with XLA below that.
- TPU: mixed_bfloat16 (TPUs compile every step with XLA regardless).
"""

from __future__ import annotations

import dataclasses

import keras

from engine.devices import DeviceInfo

CPU_BF16_MODELS = {"resnet": 1.23}  # measured mixed_bfloat16 / float32 train-step speed on an AVX512-BF16 CPU


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The resolved dtype policy and XLA setting, with why each was chosen."""

    precision: str
    jit_compile: bool
    reason: str


def _auto_precision(device: DeviceInfo, model: str) -> tuple[str, str]:
    if device.kind == "TPU":
        return "mixed_bfloat16", "TPU: bfloat16 is native"
    if device.kind == "GPU":
        if device.gpu_compute_capability and device.gpu_compute_capability >= (7, 0):
            return "mixed_float16", f"GPU compute capability {device.gpu_compute_capability} has tensor cores"
        return "float32", f"GPU compute capability {device.gpu_compute_capability} lacks fast float16"
    if device.cpu_bf16 and model in CPU_BF16_MODELS:
        return "mixed_bfloat16", f"CPU with bfloat16 instructions: {model} measured {CPU_BF16_MODELS[model]}x"
    return "float32", f"CPU: mixed_bfloat16 not measured faster for {model}"


def _auto_jit(device: DeviceInfo) -> tuple[bool, str]:
    if device.kind == "CPU":
        return False, "CPU: XLA measured slower for every model (0.09-0.80x)"
    return True, f"{device.kind}: XLA fuses the step"


def resolve(precision: str, jit_compile: str, device: DeviceInfo, model: str = "") -> Numerics:
    """Turns the flag values (config.PRECISIONS, config.JIT_CHOICES) into a concrete dtype policy and XLA
    setting for `model` on `device`."""
    reasons = []
    if precision == "auto":
        precision, why = _auto_precision(device, model)
        reasons.append(f"precision auto -> {precision} ({why})")
    if jit_compile == "auto":
        jit, why = _auto_jit(device)
        reasons.append(f"jit_compile auto -> {jit} ({why})")
    else:
        jit = jit_compile == "true"
    return Numerics(precision, jit, "; ".join(reasons) or "set by flags")


def apply(numerics: Numerics) -> None:
    """Sets the global Keras dtype policy; call before building the model."""
    keras.mixed_precision.set_global_policy(numerics.precision)
