"""Devices and tf.distribute strategies (`--strategy`, `--cpu_replicas`, `--tpu`).

On a host without GPUs, `mirrored` splits the CPU into `--cpu_replicas` virtual devices so the replicated
code path (per-replica batches, cross-replica reduction, SyncOnRead metrics) is the one that runs; each
device's ops run on its share of the cores (`_share_cores`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from engine.config import FlagError


class StrategyError(FlagError):
    """A strategy that cannot run here, or a batch size it cannot split; names the flag at fault."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the strategy runs on."""

    kind: str  # "CPU", "GPU" or "TPU"
    names: tuple[str, ...]
    gpu_compute_capability: tuple[int, int] | None = None  # lowest among the GPUs
    cpu_bf16: bool = False  # the CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_compute_capability() -> tuple[int, int] | None:
    """The lowest compute capability among visible GPUs, or None without GPUs."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        if "compute_capability" in details:
            capabilities.append(tuple(details["compute_capability"]))
    return min(capabilities) if capabilities else None


def _split_cpu(replicas: int) -> list[str]:
    """Splits the CPU into `replicas` logical devices (must run before TF initialises its runtime)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if not existing or len(existing) != replicas:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return [f"/cpu:{i}" for i in range(replicas)]


def _share_cores(replicas: int) -> None:
    """Gives each of `replicas` virtual CPU devices its share of the cores: one op uses cores // replicas
    threads and the replicas' ops run side by side. With TensorFlow's default (every op on all cores) two
    replicas on 2 cores took 32.1 ms per Fashion-MNIST step, with 1 thread per op 27.1 ms (one_device: 29.0;
    measured). A runtime already started (a second strategy in one process) keeps its threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // replicas))
        tf.config.threading.set_inter_op_parallelism_threads(max(cores, replicas))
    except RuntimeError:  # "cannot be modified after initialization"
        pass


def build_strategy(name: str, cpu_replicas: int = 2, tpu: str = "") -> tuple[tf.distribute.Strategy, DeviceInfo]:
    """Creates the strategy `name` (one of config.STRATEGIES); call before any other TensorFlow work in the
    process."""
    if name == "tpu":
        return _tpu_strategy(tpu)
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]
    capability = gpu_compute_capability()
    kind = "GPU" if gpus else "CPU"
    bf16 = kind == "CPU" and cpu_has_bf16()
    if name == "default":
        strategy = tf.distribute.get_strategy()
        return strategy, DeviceInfo(kind, tuple(gpus[:1] or ["/cpu:0"]), capability, bf16)
    if name == "one_device":
        device = (gpus or ["/cpu:0"])[0]
        return tf.distribute.OneDeviceStrategy(device), DeviceInfo(kind, (device,), capability, bf16)
    if name == "mirrored":
        if gpus:
            devices = gpus
        else:
            if cpu_replicas < 1:
                raise StrategyError(f"--cpu_replicas={cpu_replicas} must be at least 1")
            devices = _split_cpu(cpu_replicas)
            _share_cores(cpu_replicas)
        return _mirrored(tuple(devices)), DeviceInfo(kind, tuple(devices), capability, bf16)
    if name != "multi_worker_mirrored":
        raise StrategyError(f"--strategy={name} is unknown")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy, DeviceInfo(kind, tuple(gpus or ["/cpu:0"]), capability, bf16)


_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def _mirrored(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy per device set and process: a second one's all-reduces reuse the first one's
    collective instance keys and fail ("Shape mismatch in the collective instance", seen with two models
    trained one after the other in one process)."""
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[devices]


def _tpu_strategy(tpu: str) -> tuple[tf.distribute.Strategy, DeviceInfo]:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        where = f"--tpu={tpu}" if tpu else "this host (no --tpu given)"
        raise StrategyError(f"--strategy=tpu: no TPU found at {where}: {error}. On a Cloud TPU VM pass "
                            "--tpu=local; for a TPU node pass --tpu=NAME.") from error
    strategy = tf.distribute.TPUStrategy(resolver)
    devices = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
    return strategy, DeviceInfo("TPU", devices)


def check_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Returns the per-replica batch size, or raises if the global batch does not split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        raise StrategyError(f"--batch_size={global_batch_size} (global) must be a positive multiple of the "
                            f"{replicas} replicas in sync; try --batch_size={max(1, global_batch_size // replicas) * replicas}")
    return global_batch_size // replicas


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, worker index) for this process; single-process strategies are always chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    if resolver is None or not config.get("cluster"):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    has_chief = "chief" in config["cluster"]
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, task_id


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas this worker feeds (the default strategy, which has no device list, has one)."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:
        return 1
