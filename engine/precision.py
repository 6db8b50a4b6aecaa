"""Resolves `--precision` and `--jit_compile`, including their device-aware `auto` defaults.

The `auto` choices follow measurements (see BUILD.md, "Precision and XLA defaults"):
- CPU: float32 without XLA. On this project's 2-core AVX512-BF16 CPU, XLA made a MobileNetV3 train step
  ~9x slower and a plain conv net ~1.7x slower, and mixed_bfloat16 was 0.55x for depthwise models.
- GPU: mixed_float16 with XLA on compute capability >= 7.0 (tensor cores); float32 with XLA below that.
- TPU: mixed_bfloat16 (TPUs compile every step with XLA regardless).
"""

from __future__ import annotations

import dataclasses

import keras

from engine.config import FlagError
from engine.devices import DeviceInfo

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The resolved dtype policy and XLA setting, with why each was chosen."""

    precision: str
    jit_compile: bool
    reason: str


def _auto_precision(device: DeviceInfo) -> tuple[str, str]:
    if device.kind == "TPU":
        return "mixed_bfloat16", "TPU: bfloat16 is native"
    if device.kind == "GPU":
        if device.gpu_compute_capability and device.gpu_compute_capability >= (7, 0):
            return "mixed_float16", f"GPU compute capability {device.gpu_compute_capability} has tensor cores"
        return "float32", f"GPU compute capability {device.gpu_compute_capability} lacks fast float16"
    return "float32", "CPU: mixed precision measured no faster (depthwise models 0.55x)"


def _auto_jit(device: DeviceInfo) -> tuple[bool, str]:
    if device.kind == "CPU":
        return False, "CPU: XLA measured 1.7-9x slower per step"
    return True, f"{device.kind}: XLA fuses the step"


def resolve(precision: str, jit_compile: str, device: DeviceInfo) -> Numerics:
    """Turns the flag values into a concrete dtype policy and XLA setting for `device`."""
    if precision not in PRECISIONS:
        raise FlagError(f"--precision={precision} is unknown; choose one of {', '.join(PRECISIONS)}")
    if jit_compile not in JIT_CHOICES:
        raise FlagError(f"--jit_compile={jit_compile} is unknown; choose one of {', '.join(JIT_CHOICES)}")
    reasons = []
    if precision == "auto":
        precision, why = _auto_precision(device)
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
