"""Time to accuracy: the engine's defaults against the way the seed examples train, on the same images, the same
model architecture and the same number of epochs, one run after the other.

    python benchmarks/time_to_accuracy.py                       # the generated shapes, target 0.95
    python benchmarks/time_to_accuracy.py --data=fashion_mnist  # ../shared/data/fashion-mnist, target 0.90

Rows:
  seeds       shapes: keras.utils.image_dataset_from_directory at the engine's planned size + RandomFlip and
              RandomZoom(0.1) in the model, `fit` with Adam 1e-3, one device; Fashion-MNIST: `fit` on the NumPy
              arrays (grey repeated to RGB, the engine's input), Adam 1e-3, batch 64
  one_device  `python launch.py --dataset=... --strategy=one_device` with its defaults
  mirrored    the same with --strategy=mirrored (two virtual CPU replicas here)
  seeds_unstalled  derived from the seeds' runs (not a --rows value): their epochs without each epoch's wait
              before its first training step, where `fit` releases the last epoch's iterators and the process
              sometimes idles for many seconds (BUILD.md); the engine repeats its training data and releases
              none. Every wait is taken out, also the usual 0.01-0.02 s. The column "x unstalled" compares with it.

Every row runs in its own process and is timed from that process's start (the engine's start-up, data listing
and tracing count; so does TensorFlow's import in the seeds' row). Round r of --repeats seeds every row with
--seed + r (the engine's --seed; the seeds' way's initial weights, augmentation and shuffle), so the median is
over different initialisations and data orders, alike for all rows. Printed: seconds and epochs until the
validation accuracy first reaches the target, the accuracy after 5 epochs, and the final accuracy.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "shapes", ["shapes", "fashion_mnist"], "Which data to train on.")
flags.DEFINE_string("fashion_mnist", os.path.join(ROOT, "..", "shared", "data", "fashion-mnist"),
                    "The Fashion-MNIST IDX folder.")
flags.DEFINE_float("target", 0.0, "Validation accuracy to reach; 0: 0.95 for shapes, 0.90 for Fashion-MNIST.")
flags.DEFINE_list("rows", ["seeds", "one_device", "mirrored"], "Rows to run.")
flags.DEFINE_integer("repeats", 1, "Runs of each row, interleaved; the median is reported.")
flags.DEFINE_integer("seed", 0, "Seed of the first round; round r uses seed + r.")
flags.DEFINE_list("engine_flags", [], "Extra launch.py flags for the engine rows (e.g. warmup_epochs=0.2).")
flags.DEFINE_string("only", "", "Internal: train the seeds' way in this process, print one EPOCH line per epoch.")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")

EPOCH_LINE = re.compile(r"val_accuracy: ([0-9.]+)")


def _engine_plan() -> tuple[object, dict]:
    """The data source and the engine's planned image size, batch and epochs for it, on one device."""
    from engine.config import Config
    from engine.job import plan_run, source_of

    config = Config(dataset=_dataset_flag())
    source = source_of(config)
    planned, run_plan = plan_run(config, source, replicas=1)
    return source, {"image_size": planned.image_size, "batch_size": planned.batch_size,
                    "epochs": run_plan.steps.epochs}


def _dataset_flag() -> str:
    return "shapes" if FLAGS.data == "shapes" else f"idx:{os.path.abspath(FLAGS.fashion_mnist)}"


def train_seeds_way() -> None:
    """The seed examples' way (see the module docstring); prints "EPOCH <seconds> <val_accuracy> <wait>" per
    epoch, <wait> the seconds from the epoch's start to its first training step."""
    import keras
    import numpy as np

    from models.classification import build_classifier

    keras.utils.set_random_seed(FLAGS.seed)
    source, plan = _engine_plan()
    size, epochs, batch = plan["image_size"], plan["epochs"], plan["batch_size"]
    train, val = source.splits["train"], source.splits["val"]
    model = build_classifier("small_cnn", len(source.class_names), size)
    if FLAGS.data == "shapes":
        def folder(split):  # image_dataset_from_directory lists files sorted; labels follow that order
            order = np.argsort(split.paths)
            return keras.utils.image_dataset_from_directory(
                os.path.dirname(split.paths[0]), labels=[split.labels[i] for i in order], image_size=(size, size),
                batch_size=batch, shuffle=True, seed=FLAGS.seed, verbose=False)

        train_data, val_data = folder(train), folder(val)
        augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomZoom(0.1)])
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, model(keras.ops.cast(augment(inputs), "uint8")))
        fit_args = {"x": train_data, "validation_data": val_data}
    else:
        rgb = lambda images: np.repeat(images, 3, axis=-1)  # noqa: E731 (the engine's input is RGB)
        fit_args = {"x": rgb(train.images), "y": train.labels, "batch_size": batch,
                    "validation_data": (rgb(val.images), val.labels)}
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    class Report(keras.callbacks.Callback):
        """Also times each epoch's wait before its first training step, where `fit` releases the last epoch's
        iterators and makes a new one."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.first_batch_wait = time.time() - self.epoch_start

        def on_epoch_end(self, epoch, logs=None):
            print(f"EPOCH {time.time() - START:.2f} {logs['val_accuracy']:.4f} {self.first_batch_wait:.2f}",
                  flush=True)

    model.fit(epochs=epochs, callbacks=[Report()], verbose=0, **fit_args)


def _timed_epochs(command: list[str], env: dict | None = None) -> tuple[list[tuple[float, float]], list[float]]:
    """Runs `command`; (seconds since its start, validation accuracy) at the end of every epoch, and each epoch's
    wait before its first training step where the command prints it (the seeds' way)."""
    start, epochs, waits = time.time(), [], []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env=env)
    tail = []
    for line in process.stdout:
        tail = (tail + [line])[-40:]
        if line.startswith("EPOCH "):
            _, seconds, accuracy, wait = line.split()
            epochs.append((float(seconds), float(accuracy)))
            waits.append(float(wait))
        elif (match := EPOCH_LINE.search(line)) and "step" in line:
            epochs.append((time.time() - start, float(match.group(1))))
    if process.wait():
        sys.exit(f"{' '.join(command)} failed:\n{''.join(tail)}")
    return epochs, waits


def _row(name: str, seed: int) -> tuple[list[tuple[float, float]], list[float]]:
    if name == "seeds":
        return _timed_epochs([sys.executable, os.path.abspath(__file__), "--only=seeds", f"--data={FLAGS.data}",
                              f"--fashion_mnist={FLAGS.fashion_mnist}", f"--seed={seed}"])
    with tempfile.TemporaryDirectory() as run:
        return _timed_epochs([sys.executable, os.path.join(ROOT, "launch.py"), f"--dataset={_dataset_flag()}",
                              f"--strategy={name}", "--verbose=2", f"--model_dir={run}", f"--seed={seed}"]
                             + [f"--{flag}" for flag in FLAGS.engine_flags])


def _summary(epochs: list[tuple[float, float]], target: float) -> dict:
    reached = next(((i + 1, seconds) for i, (seconds, accuracy) in enumerate(epochs) if accuracy >= target),
                   (None, None))
    return {"epochs_to_target": reached[0], "seconds_to_target": reached[1], "final": epochs[-1][1],
            "after_5_epochs": epochs[min(4, len(epochs) - 1)][1], "epochs": epochs}


def _without_waits(epochs: list[tuple[float, float]], waits: list[float]) -> list[tuple[float, float]]:
    """The epochs' (seconds, accuracy) with every wait so far taken out of each epoch's end time."""
    return [(round(seconds - waited, 2), accuracy)
            for (seconds, accuracy), waited in zip(epochs, itertools.accumulate(waits))]


START = time.time()


def main(argv: list[str]) -> None:
    """Runs the rows one after the other (--repeats times, interleaved) and prints the table."""
    del argv
    if FLAGS.only == "seeds":
        train_seeds_way()
        return
    if "seeds_unstalled" in FLAGS.rows:
        sys.exit("--rows: seeds_unstalled is derived from the seeds row; ask for seeds")
    target = FLAGS.target or (0.95 if FLAGS.data == "shapes" else 0.90)
    plan = _engine_plan()[1]
    runs: dict[str, list[dict]] = {name: [] for row in FLAGS.rows
                                   for name in ([row, "seeds_unstalled"] if row == "seeds" else [row])}
    for repeat in range(FLAGS.repeats):
        for row in FLAGS.rows:
            epochs, waits = _row(row, FLAGS.seed + repeat)
            runs[row].append(_summary(epochs, target))
            if row == "seeds":
                runs[row][-1]["first_batch_waits"] = waits
                runs["seeds_unstalled"].append(_summary(_without_waits(epochs, waits), target))
            print(f"  {row} run {repeat + 1}: {json.dumps({k: v for k, v in runs[row][-1].items() if k != 'epochs'})}",
                  flush=True)
    median = lambda values: statistics.median(values) if values else None  # noqa: E731

    def seconds_to_target(row_runs: list[dict]) -> float | None:  # the median, if every run got there
        times = [r["seconds_to_target"] for r in row_runs if r["seconds_to_target"] is not None]
        return median(times) if len(times) == len(row_runs) else None

    print(f"\n{FLAGS.data}: small_cnn at {plan['image_size']} px, batch {plan['batch_size']}, "
          f"{plan['epochs']} epochs; target val accuracy {target}; median of {FLAGS.repeats}")
    print(f"{'row':16s} {'s to target':>12s} {'epochs':>7s} {'x seeds time':>13s} {'x unstalled':>12s} "
          f"{'acc@5':>6s} {'final':>6s}")
    seeds_time, unstalled_time = (seconds_to_target(runs[row]) if row in runs else None
                                  for row in ("seeds", "seeds_unstalled"))
    results = {}
    for row, row_runs in runs.items():
        seconds = seconds_to_target(row_runs)
        results[row] = {"seconds_to_target": seconds, "epochs_to_target": median(
            [r["epochs_to_target"] for r in row_runs if r["epochs_to_target"]]),
            "after_5_epochs": median([r["after_5_epochs"] for r in row_runs]),
            "final": median([r["final"] for r in row_runs]), "runs": row_runs}
        speed, unstalled = (f"{seconds / reference:{width}.2f}" if seconds and reference else f"{'-':>{width}s}"
                            for reference, width in ((seeds_time, 13), (unstalled_time, 12)))
        print(f"{row:16s} {seconds or float('nan'):12.1f} {results[row]['epochs_to_target'] or '-':>7} {speed} "
              f"{unstalled} {results[row]['after_5_epochs']:6.3f} {results[row]['final']:6.3f}")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
