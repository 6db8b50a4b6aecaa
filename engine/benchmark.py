"""`--mode=benchmark`: where the time of a training step goes, for the configured task, data, model and strategy.

Three measurements in one process, each after as many warm-up steps as it times (`--benchmark_steps`):
  input alone    the distributed training input, iterated without training
  step alone     the train step on one real batch per input pipeline repeated from memory (already decoded
                 and augmented; the strategy's own prefetching puts it on the devices)
  end to end     training on the real input
then a verdict (input- or compute-bound, by how much, and the knobs to turn), printed and written to
RUN/benchmark.json.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf

from datasets import pipeline
from datasets.sources.base import Examples
from engine import callbacks as engine_callbacks
from engine import files
from engine.fit import throughput_logger
from engine.job import Job

BOUND_MARGIN = 1.1  # one side must be this much faster than the other for a verdict; else balanced


def _input_alone(job: Job, steps: int) -> float:
    """Global images/s of the distributed training input alone."""
    iterator = iter(job.dataset(training=True))
    for _ in range(steps):
        next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * job.config.batch_size / (time.perf_counter() - started)


def _fit_rate(job: Job, model: keras.Model, dataset, steps: int,
              logger: engine_callbacks.ThroughputLogger) -> dict:
    """Images/s (and input wait, if `logger` has a clock) of the second of two `steps`-step epochs."""
    history = model.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[logger], verbose=job.config.verbose)
    last = {key: values[-1] for key, values in history.history.items()}
    return {"images_per_second": last["images_per_second"], "input_wait_fraction": last.get("input_wait_fraction")}


def one_batch_repeated(job: Job) -> tf.distribute.DistributedDataset:
    """One real batch per input pipeline, decoded and augmented once, then repeated from memory."""
    config = job.pipeline_config(training=True)

    def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return pipeline.build_dataset(job.train_split, config, context, job.task.model_io).take(1).cache().repeat()

    return job.strategy.distribute_datasets_from_function(input_fn)


def knobs(job: Job, input_bound: bool) -> list[str]:
    """What to try, given which side limits the step."""
    config, kind = job.config, job.device.kind
    if input_bound:
        found = []
        if config.map_parallelism:
            found.append(f"--map_parallelism={config.map_parallelism} caps the pipeline's parallel calls: "
                         "0 lets tf.data autotune them")
        if config.prefetch_batches == 0:
            found.append("--prefetch_batches=0 turns prefetching off: -1 autotunes it")
        if config.cache == "none" and not job.train_split.in_memory:
            reason = job.plan.reasons.get("cache")
            found.append("--cache=disk:PATH (or memory) decodes each image once, before augmentation"
                         + (f" (--cache=auto chose none: {reason})" if reason else ""))
        if isinstance(job.train_split, Examples):
            found.append("on slow or remote storage, TFRecord shards (--mode=convert) read in large sequential "
                         "blocks")
        found.append("more CPU for the input: the tf.data service (tf.data.experimental.service) runs the "
                     "pipeline on other machines")
        if kind == "CPU":
            found.append("on CPU, input and step share the same cores: what one gains the other loses")
        return found
    found = []
    if job.numerics.precision == "float32" and kind != "CPU":
        found.append(f"--precision={'mixed_bfloat16' if kind == 'TPU' else 'mixed_float16'}")
    if not job.numerics.jit_compile and kind != "CPU":
        found.append("--jit_compile=true (XLA)")
    if kind == "CPU":
        found.append("on CPU, mixed_bfloat16 and XLA help some models and hurt others: "
                     "benchmarks/train_step.py measures them (BUILD.md)")
    found.append("a smaller --model or --image_size, or more replicas")
    if config.steps_per_execution == 1 and config.strategy in ("default", "one_device", "tpu"):
        # (under mirrored, Keras' multi-step loop fails here: BUILD.md, precision matrix)
        found.append("--steps_per_execution > 1 for small models (fewer calls into the compiled step)")
    return found


def verdict(input_rate: float, step_rate: float) -> tuple[str, float]:
    """("input-bound" | "compute-bound" | "balanced", how many times faster the other side is)."""
    if step_rate > input_rate * BOUND_MARGIN:
        return "input-bound", step_rate / input_rate
    if input_rate > step_rate * BOUND_MARGIN:
        return "compute-bound", input_rate / step_rate
    return "balanced", max(input_rate, step_rate) / min(input_rate, step_rate)


def run(job: Job, model: keras.Model) -> dict:
    """Measures input alone, step alone and end to end; prints the table and verdict; writes benchmark.json."""
    steps, replicas = job.config.benchmark_steps, job.strategy.num_replicas_in_sync
    print(f"[benchmark] 1/3 input alone: {steps} warm-up + {steps} timed batches", flush=True)
    input_rate = _input_alone(job, steps)
    print(f"[benchmark] 2/3 train step alone on a batch repeated from memory: 2 x {steps} steps", flush=True)
    step = _fit_rate(job, model, one_batch_repeated(job), steps, throughput_logger(job, input_wait=False))
    print(f"[benchmark] 3/3 end to end: 2 x {steps} steps", flush=True)
    logger = throughput_logger(job)
    real_input = job.dataset(training=True, on_ready=logger.clock.note if logger.clock else None)
    end_to_end = _fit_rate(job, model, real_input, steps, logger)
    bound, factor = verdict(input_rate, step["images_per_second"])
    result = {
        "input_images_per_second": input_rate,
        "step_images_per_second": step["images_per_second"],
        "end_to_end_images_per_second": end_to_end["images_per_second"],
        "end_to_end_input_wait_fraction": end_to_end["input_wait_fraction"],
        "replicas": replicas, "global_batch_size": job.config.batch_size, "steps": steps,
        "verdict": bound, "factor": factor, "knobs": knobs(job, bound == "input-bound") if bound != "balanced" else [],
        **{k: job.resolved()[k] for k in ("strategy", "device_kind", "precision", "jit_compile")},
        "task": job.config.task, "model": job.config.model, "dataset": job.config.dataset,
    }
    rows = [("input alone", input_rate), ("step alone", step["images_per_second"]),
            ("end to end", end_to_end["images_per_second"])]
    print(f"[benchmark] {'measurement':14s} {'images/s':>9s} {'per replica':>12s}")
    for name, rate in rows:
        print(f"[benchmark] {name:14s} {rate:9.0f} {rate / replicas:12.0f}")
    if end_to_end["input_wait_fraction"] is not None:
        print(f"[benchmark] end to end, steps waited for input {end_to_end['input_wait_fraction']:.0%} of the time")
    because = {"input-bound": f"the step could take {factor:.1f}x what the input delivers",
               "compute-bound": f"the input delivers {factor:.1f}x what the step takes",
               "balanced": f"input and step within {factor:.2f}x of each other"}[bound]
    print(f"[benchmark] verdict: {bound}: {because}")
    for knob in result["knobs"]:
        print(f"[benchmark]   try: {knob}")
    if job.is_chief:
        path = os.path.join(job.model_dir, "benchmark.json")
        files.write_json(path, result, indent=2)
        print(f"[benchmark] written to {path}", flush=True)
    return result
