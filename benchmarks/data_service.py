"""Training input through the tf.data service against the same input made locally, in one run, with ratios.

Starts a local dispatcher and worker processes (`launch.py --mode=data_dispatcher / data_worker`), then measures
the engine's training input alone (`--mode=benchmark`'s first figure: global batches of the distributed
dataset, after a warm-up) for each row, every row in a fresh trainer process, in interleaved rounds; prints
medians and the ratio to `local`.

    python benchmarks/data_service.py --repeats=3

Rows:
  local      the input pipeline in the trainer process (no --data_service)
  service_1  through the service with one worker
  service_2  through the service with two workers

The data is the input-pipeline benchmark's folder of ~400 px JPEGs (generated once), random-resized crops to
224, batches of 64, one device. On one machine the workers share the trainer's CPU cores, so the service can
only add cost here (serialising batches over gRPC, a second process); on a real deployment each worker brings
its own cores.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "/tmp/tfdata-engine-bench/scenes", "The generated JPEG folder (input_pipeline.py's).")
flags.DEFINE_integer("num_images", 2000, "Images to generate when the folder is missing.")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds; the median of each row is reported.")
flags.DEFINE_integer("steps", 40, "Warm-up and timed batches per measurement.")
flags.DEFINE_list("rows", ["local", "service_1", "service_2"], "Rows to run.")
flags.DEFINE_string("only", "", "Internal: measure in this process against this --data_service address ('' local).")

ROWS = {"local": 0, "service_1": 1, "service_2": 2}  # workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _server(*flags_: str) -> subprocess.Popen:
    """A launch.py service server, once it says it is up."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *flags_], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("[data_service]"):
            return process
    raise RuntimeError(f"{flags_} did not start")


def measure(service: str) -> float:
    """Images/s of the engine's training input alone, through `service` ('' local)."""
    from engine import benchmark, quiet

    quiet.import_tensorflow_quietly()
    from engine.config import Config
    from engine.job import prepare

    with tempfile.TemporaryDirectory() as model_dir:
        job = prepare(Config(dataset=f"folder:{FLAGS.data}", strategy="one_device", image_size=224,
                             min_crop_area=0.08, batch_size=64, cache="none", epochs=1, mode="benchmark",
                             model_dir=model_dir, data_service=service))
        return benchmark._input_alone(job, FLAGS.steps)


def _row(row: str, address: str) -> float:
    result = subprocess.run([sys.executable, __file__, f"--only={address if ROWS[row] else 'local'}",
                             f"--data={FLAGS.data}", f"--steps={FLAGS.steps}"],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]


def main(argv: list[str]) -> None:
    if FLAGS.only:
        print(json.dumps({"images_per_second": measure("" if FLAGS.only == "local" else FLAGS.only)}))
        return
    if not os.path.isdir(FLAGS.data):
        from benchmarks import input_pipeline

        input_pipeline.generate(FLAGS.data, FLAGS.num_images)
    rates: dict[str, list[float]] = {row: [] for row in FLAGS.rows}
    for round_index in range(FLAGS.repeats):
        for row in FLAGS.rows:  # a fresh dispatcher and workers for each measurement
            port = _free_port()
            servers = [_server("--mode=data_dispatcher", f"--port={port}")] if ROWS[row] else []
            servers += [_server("--mode=data_worker", f"--dispatcher=localhost:{port}", f"--port={_free_port()}")
                        for _ in range(ROWS[row])]
            try:
                rates[row].append(_row(row, f"grpc://localhost:{port}"))
            finally:
                for server in servers:
                    server.kill()
                    server.wait()
            print(f"round {round_index + 1} {row}: {rates[row][-1]:.0f} images/s", flush=True)
    local = statistics.median(rates["local"]) if rates.get("local") else None
    print(f"\n{'row':10s} {'images/s':>9s} {'x local':>8s}   (median of {FLAGS.repeats})")
    for row, values in rates.items():
        median = statistics.median(values)
        print(f"{row:10s} {median:9.0f} {median / local if local else float('nan'):8.2f}")


if __name__ == "__main__":
    app.run(main)
