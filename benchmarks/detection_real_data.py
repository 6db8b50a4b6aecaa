"""Trains the default detector on real labelled data and reports COCO mAP: BCCD (Pascal VOC, 3 classes of
blood cells, two zero-size boxes dropped by --skip_bad_labels) and coco8 (Ultralytics YOLO txt, 80 names).

Each dataset is skipped when its folder is absent. Every run goes through `launch.py` with only the flags the
data requires, so input size, batch and run length are the engine's plan and the numbers its own
(summary.json); --epochs and --image_size override the plan.

    python benchmarks/detection_real_data.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

FLAGS = flags.FLAGS
flags.DEFINE_string("data", SHARED, "The folder holding bccd/ and coco8/.")
flags.DEFINE_integer("epochs", 0, "Training epochs per dataset; 0: planned from the data.")
flags.DEFINE_integer("image_size", 0, "Input size; 0: planned from the data.")
flags.DEFINE_string("model", "yolov8_n", "Detector size.")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def datasets(root: str) -> dict[str, list[str]]:
    """The datasets found under `root` with the flags each needs."""
    found = {}
    if os.path.isdir(os.path.join(root, "bccd", "BCCD")):
        found["bccd"] = [f"--dataset=voc:{os.path.join(root, 'bccd', 'BCCD')}", "--skip_bad_labels"]
    if os.path.exists(os.path.join(root, "coco8", "data.yaml")):
        found["coco8"] = [f"--dataset=yolo:{os.path.join(root, 'coco8', 'data.yaml')}"]
    return found


def train(name: str, flags_: list[str], model_dir: str) -> dict:
    """One `launch.py` run; its summary plus wall time."""
    started = time.perf_counter()
    explicit = [f"--{name}={getattr(FLAGS, name)}" for name in ("image_size", "epochs") if getattr(FLAGS, name)]
    command = [sys.executable, os.path.join(REPO, "launch.py"), "--task=detection", f"--model={FLAGS.model}",
               "--verbose=2", f"--model_dir={model_dir}", *explicit, *flags_]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{name}: launch.py failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    return {"dataset": name, "seconds": time.perf_counter() - started, "image_size": config["image_size"],
            "batch_size": config["batch_size"], "steps": config["resolved"]["total_steps"], **summary}


def main(argv: list[str]) -> None:
    found = datasets(FLAGS.data)
    if not found:
        print(f"no bccd/ or coco8/ under {FLAGS.data}: nothing to run")
        return
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for name, flags_ in found.items():
            results.append(train(name, flags_, os.path.join(runs, name)))
    print(f"\n{FLAGS.model} from scratch")
    print(f"{'dataset':8s} {'train':>6s} {'val':>5s} {'size':>5s} {'batch':>5s} {'steps':>6s} {'seconds':>8s} "
          f"{'mAP50':>6s} {'mAP50:95':>8s} {'best mAP50':>10s}")
    for r in results:
        print(f"{r['dataset']:8s} {r['num_train']:6d} {r['num_val']:5d} {r['image_size']:5d} {r['batch_size']:5d} "
              f"{r['steps']:6d} {r['seconds']:8.0f} {r['val_map50']:6.3f} {r['val_map50_95']:8.3f} "
              f"{r['best_value']:10.3f}")
        print("         per-class AP50: " + ", ".join(f"{k} {v:.3f}" for k, v in r["val_per_class_ap50"].items()
                                                      if v is not None))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
