"""Trains and evaluates image models: `python launch.py --strategy=mirrored`.

Every flag is a field of `engine.config.Config` with the same name (tests/test_config.py checks it); searching
for `config.NAME` finds where flag NAME acts. `engine/run.py` dispatches on --mode.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

from datasets import budget
from engine import quiet
from engine.config import CHOICES, Config

DEFAULTS = Config()
FLAGS = flags.FLAGS

flags.DEFINE_enum("task", DEFAULTS.task, CHOICES["task"], "What to train.")
flags.DEFINE_string("dataset", DEFAULTS.dataset,
                    "KIND[:PATH]: shapes[:DIR] (generated, the default), folder:DIR (one sub-folder per class), "
                    "tfrecord:DIR (--mode=convert output), tfds:NAME[:SPLIT], idx:DIR (MNIST format), masks:DIR "
                    "(images/ + class-index PNG masks/ matched by stem), labelme:DIR (labelme JSON polygons), "
                    "coco:ANNOTATIONS.json (polygons, RLE and boxes), yolo:DATA.yaml or yolo:DIR (YOLO txt labels), "
                    "voc:DIR (Pascal VOC XML); labelme, masks for segmentation, yolo and voc for detection.")
flags.DEFINE_list("mask_dirs", DEFAULTS.mask_dirs,
                  "IMAGES,MASKS: the two folders under --dataset=masks:DIR (CamVid: val,valannot).")
flags.DEFINE_list("mask_classes", DEFAULTS.mask_classes,
                  "Mask class names in index order for --dataset=masks:DIR (default: DIR/classes.txt); for "
                  "labelme:DIR the names after background (default: DIR/classes.txt, else the labels found).")
flags.DEFINE_float("val_fraction", DEFAULTS.val_fraction,
                   "Fraction held out for validation when the data has no train/val split.")
flags.DEFINE_string("cache_dir", DEFAULTS.cache_dir,
                    "Where generated data is kept (default $ENGINE_CACHE_DIR or ~/.cache/tfdata-engine).")
flags.DEFINE_string("data_dir", DEFAULTS.data_dir, "TFDS data directory for --dataset=tfds:NAME.")
flags.DEFINE_bool("tfds_download", DEFAULTS.tfds_download,
                  "Let --dataset=tfds:NAME download and prepare a dataset that is not in --data_dir.")
flags.DEFINE_string("cache", DEFAULTS.cache,
                    "Cache decoded, resized images before augmentation: none, memory, disk:PATH, or auto (memory "
                    "when train and val at their cached size fit a quarter of physical memory and are files to "
                    "decode, else none; the choice and why are printed and go to config.json).")
flags.DEFINE_integer("map_parallelism", DEFAULTS.map_parallelism,
                     "Parallel calls of the input pipeline's maps; 0: tf.data autotunes them.")
flags.DEFINE_integer("prefetch_batches", DEFAULTS.prefetch_batches,
                     "Batches the input pipeline prepares ahead; -1: autotuned, 0: none.")
flags.DEFINE_string("model", DEFAULTS.model,
                    "Classification: small_cnn (default), resnet, mobilenet_v3_small, mobilenet_v3_large, "
                    "efficientnet_b0, resnet50. Segmentation: unet (default), unet_bilinear, deeplabv3plus. "
                    "Detection: yolov8_n (default), yolov8_xs, yolov8_s, yolov8_m. Flags left unset take the "
                    "defaults of the task for the model (`defaults` in engine/tasks/*.py).")
flags.DEFINE_string("init_checkpoint", DEFAULTS.init_checkpoint,
                    "Start from earlier weights: a run directory (its best.keras), a .keras or .weights.h5 file of "
                    "this engine, or 'imagenet' (keras.applications classifiers; downloads). Weights load where layer "
                    "path and shape match; the rest (a head for other classes) start fresh.")
flags.DEFINE_integer("freeze_epochs", DEFAULTS.freeze_epochs,
                     "With --init_checkpoint: train this many epochs with the backbone frozen, then all of it.")
flags.DEFINE_float("backbone_lr_scale", DEFAULTS.backbone_lr_scale,
                   "With --init_checkpoint: the trainable backbone's learning rate is the schedule's times this.")
flags.DEFINE_bool("train_backbone_bn", DEFAULTS.train_backbone_bn,
                  "With --init_checkpoint: let the backbone's BatchNormalization learn batch statistics (default: "
                  "frozen, in inference mode).")
flags.DEFINE_enum("strategy", DEFAULTS.strategy, CHOICES["strategy"],
                  "tf.distribute strategy. multi_worker_mirrored reads TF_CONFIG.")
flags.DEFINE_integer("cpu_replicas", DEFAULTS.cpu_replicas,
                     "Virtual CPU devices for --strategy=mirrored on a host without GPUs.")
flags.DEFINE_string("tpu", DEFAULTS.tpu, "TPU name or address for --strategy=tpu ('local' on a TPU VM).")
flags.DEFINE_integer("batch_size", DEFAULTS.batch_size,
                     "Global batch size, split evenly across replicas. Default: planned from the data (64, halved for "
                     "small datasets).")
flags.DEFINE_integer("image_size", DEFAULTS.image_size,
                     "Square training and evaluation image size in pixels. Default: planned from the data (the "
                     "images' size, the smallest labelled objects).")
flags.DEFINE_integer("epochs", DEFAULTS.epochs,
                     "Epochs (passes over the training data) to train; ignored when --train_steps is set. Default: "
                     "planned from the data (the optimizer steps the task needs, in epochs of at least 100 steps).")
flags.DEFINE_integer("train_steps", DEFAULTS.train_steps, "Total optimizer steps; 0: --epochs, or planned.")
flags.DEFINE_integer("patience", DEFAULTS.patience,
                     "Stop after this many validated epochs without a new best of the task's metric (best.keras is "
                     "kept); 0: train the whole run.")
flags.DEFINE_enum("optimizer", DEFAULTS.optimizer, CHOICES["optimizer"], "Optimizer.")
flags.DEFINE_float("learning_rate", DEFAULTS.learning_rate,
                   "Peak learning rate (after warmup). Default: the task's.")
flags.DEFINE_float("weight_decay", DEFAULTS.weight_decay, "Decoupled weight decay (sgd, adamw).")
flags.DEFINE_float("momentum", DEFAULTS.momentum, "Nesterov momentum for sgd.")
flags.DEFINE_enum("lr_schedule", DEFAULTS.lr_schedule, CHOICES["lr_schedule"],
                  "Learning-rate schedule after the linear warmup.")
flags.DEFINE_float("warmup_epochs", DEFAULTS.warmup_epochs,
                   "Linear warmup length in epochs. Default: the task's for the model (small classifiers 0.2, else 1).")
flags.DEFINE_float("ema_decay", DEFAULTS.ema_decay,
                   "Keep an exponential moving average of the weights with this decay (e.g. 0.999); evaluation and "
                   "the saved models use it. 0: off. Default: the task's (classification: 0.99 when the run has "
                   "at least 1000 optimizer updates).")
flags.DEFINE_bool("dct_decode", DEFAULTS.dct_decode,
                  "Training decodes JPEGs much larger than the input at a DCT scale (1/2, 1/4, 1/8). Default: "
                  "planned, on when a sampled training image is at least twice the input size. Evaluation and "
                  "serving always may.")
flags.DEFINE_integer("grad_accum_steps", DEFAULTS.grad_accum_steps,
                     "Average the gradients of this many batches per optimizer update (effective batch "
                     "--batch_size x this; one replica only).")
flags.DEFINE_enum("precision", DEFAULTS.precision, CHOICES["precision"],
                  "Keras dtype policy; auto picks per device (see BUILD.md).")
flags.DEFINE_enum("jit_compile", DEFAULTS.jit_compile, CHOICES["jit_compile"],
                  "XLA-compile the train step; auto picks per device (see BUILD.md).")
flags.DEFINE_integer("steps_per_execution", DEFAULTS.steps_per_execution,
                     "Train steps per call into the compiled function (raise it for small models on TPU/GPU).")
flags.DEFINE_string("model_dir", DEFAULTS.model_dir,
                    "Run directory; restarting with the same one resumes. Default runs/<task>-<model>-<time>. "
                    "--mode=eval takes the run's own flags from its config.json (flags given win).")
flags.DEFINE_enum("mode", DEFAULTS.mode, CHOICES["mode"],
                  "What to do. convert writes --dataset as TFRecord shards to --output; inspect reports on the "
                  "data (per-class counts, image sizes, bad files) into --model_dir/inspect.json; preview draws "
                  "--preview_batches augmented training batches into --model_dir/preview; benchmark measures "
                  "input alone, train step alone and end to end and says which limits (--model_dir/benchmark.json); "
                  "export writes --model_dir/export (--formats), checked against the Keras model; predict runs a "
                  "run's model or an --export on --images; serve starts the prediction page; data_dispatcher and "
                  "data_worker start tf.data service servers (--port, --dispatcher) for --data_service.")
flags.DEFINE_string("output", DEFAULTS.output,
                    "Output directory of --mode=convert; of --mode=predict (default: predictions/ in --model_dir or "
                    "beside --export).")
flags.DEFINE_integer("num_shards", DEFAULTS.num_shards, "TFRecord shards per split for --mode=convert.")
flags.DEFINE_integer("seed", DEFAULTS.seed, "Seed for weights, data order and augmentation.")
flags.DEFINE_bool("deterministic", DEFAULTS.deterministic,
                  "Keep tf.data element order deterministic (slower); off by default.")
flags.DEFINE_bool("skip_bad_files", DEFAULTS.skip_bad_files,
                  "Scan image files first and leave out (count and log) the ones that do not decode, instead of "
                  "stopping at the first.")
flags.DEFINE_bool("flip", DEFAULTS.flip, "Random left-right flips in training.")
flags.DEFINE_float("min_crop_area", DEFAULTS.min_crop_area,
                   "Classification: smallest area of the random-resized training crops, a fraction of the image. "
                   "Default: planned (0.5; 0.85 for images of 32 px or less).")
flags.DEFINE_float("color_jitter", DEFAULTS.color_jitter,
                   "Brightness, contrast and saturation jitter: factors in [1 - x, 1 + x]; 0 off. Default: the "
                   "task's for the model (detection: brightness 0.4, saturation 0.7).")
flags.DEFINE_float("hue", DEFAULTS.hue, "Hue jitter, a fraction of the colour circle; 0 off. Default: the task's.")
flags.DEFINE_integer("randaugment_ops", DEFAULTS.randaugment_ops,
                     "RandAugment operations per image (classification); 0 off. Default: the task's for the model.")
flags.DEFINE_float("randaugment_magnitude", DEFAULTS.randaugment_magnitude, "RandAugment magnitude, 0-10.")
flags.DEFINE_float("mixup", DEFAULTS.mixup,
                   "MixUp Beta(alpha, alpha) for classification; 0 off. Default: the task's for the model.")
flags.DEFINE_float("cutmix", DEFAULTS.cutmix,
                   "CutMix Beta(alpha, alpha) for classification; 0 off. Default: the task's for the model.")
flags.DEFINE_float("label_smoothing", DEFAULTS.label_smoothing,
                   "Label smoothing of the classification loss. Default: the task's for the model.")
flags.DEFINE_float("min_scale", DEFAULTS.min_scale,
                   "Smallest random zoom of segmentation and detection training images. Default: the task's for the "
                   "model.")
flags.DEFINE_float("max_scale", DEFAULTS.max_scale,
                   "Largest random zoom of segmentation and detection training images. Default: the task's for the "
                   "model.")
flags.DEFINE_integer("ignore_value", DEFAULTS.ignore_value,
                     "Mask value of pixels without a label (segmentation); padding gets it too.")
flags.DEFINE_float("dice_weight", DEFAULTS.dice_weight,
                   "Weight of a soft Dice term added to the segmentation cross-entropy. Default: the task's.")
flags.DEFINE_list("class_weights", DEFAULTS.class_weights,
                  "Per-class weights of the segmentation cross-entropy, one per mask class, comma-separated.")
flags.DEFINE_float("mosaic", DEFAULTS.mosaic,
                   "Detection: probability that a training image is a 2x2 Mosaic of four. Default: the task's for "
                   "the model.")
flags.DEFINE_float("box_mixup", DEFAULTS.box_mixup, "Detection: probability of blending two training images and "
                   "keeping the boxes of both.")
flags.DEFINE_integer("max_boxes", DEFAULTS.max_boxes,
                     "Detection: boxes per image, padded. 0: the most in one image of the data (x4 with Mosaic, x2 "
                     "with --box_mixup).")
flags.DEFINE_float("nms_iou", DEFAULTS.nms_iou, "Detection: IoU above which non-max suppression drops the lower box.")
flags.DEFINE_float("nms_confidence", DEFAULTS.nms_confidence,
                   "Detection: lowest confidence kept by non-max suppression (mAP wants it low).")
flags.DEFINE_bool("skip_bad_labels", DEFAULTS.skip_bad_labels,
                  "Detection data: drop (count and log) zero-area, out-of-image or unknown-class boxes and label "
                  "files without images, instead of stopping at the first.")
flags.DEFINE_integer("preview_batches", DEFAULTS.preview_batches,
                     "Augmented training batches drawn to --model_dir/preview at the start of training (0: none).")
flags.DEFINE_string("profile_steps", DEFAULTS.profile_steps,
                    "START,STOP: capture a TensorFlow profiler trace of these training steps into "
                    "--model_dir/tensorboard/train/plugins/profile (TensorBoard's Profile tab).")
flags.DEFINE_integer("benchmark_steps", DEFAULTS.benchmark_steps,
                     "--mode=benchmark: timed steps per measurement (after as many warm-up steps).")
flags.DEFINE_enum("checkpoint", DEFAULTS.checkpoint, CHOICES["checkpoint"],
                  "Which weights of --model_dir export, predict and serve use: best.keras or final.keras (with "
                  "--ema_decay both hold the averaged weights).")
flags.DEFINE_integer("checkpoint_steps", DEFAULTS.checkpoint_steps,
                     "Also back up the model and optimizer every N steps (default: at epoch ends only), so a kill "
                     "loses at most N steps; a restart with the same --model_dir resumes at the step.")
flags.DEFINE_integer("nan_retries", DEFAULTS.nan_retries,
                     "Roll back to the last backup and go on this many times when the training loss is not "
                     "finite; then stop with a message, keeping the last good backup.")
flags.DEFINE_list("debug_nan_steps", DEFAULTS.debug_nan_steps,
                  "Test hook: make the weights NaN before these optimizer steps (once each).")
flags.DEFINE_list("formats", DEFAULTS.formats,
                  "--mode=export: any of saved_model, tflite_float32, tflite_float16, tflite_int8, onnx (default: "
                  "all). TFLite and ONNX need the export extra: pip install -e \".[export]\".")
flags.DEFINE_integer("parity_images", DEFAULTS.parity_images,
                     "--mode=export: validation images every artifact predicts beside the Keras model.")
flags.DEFINE_integer("calibration_images", DEFAULTS.calibration_images,
                     "--mode=export: training images that calibrate tflite_int8's quantization.")
flags.DEFINE_string("export", DEFAULTS.export,
                    "--mode=predict or serve without --model_dir: an export directory (RUN/export), its "
                    "saved_model directory, or a .tflite or .onnx file of one.")
flags.DEFINE_string("images", DEFAULTS.images, "--mode=predict: an image file, a folder (searched recursively) or "
                    "a glob pattern.")
flags.DEFINE_integer("port", DEFAULTS.port, "--mode=serve: the local port of the prediction page; "
                     "--mode=data_dispatcher and data_worker: the server's port.")
flags.DEFINE_string("data_service", DEFAULTS.data_service,
                    "Make the training batches on a tf.data service: grpc://HOST:PORT of its dispatcher. Every "
                    "example goes out once per epoch across its workers; evaluation stays local.")
flags.DEFINE_string("dispatcher", DEFAULTS.dispatcher, "--mode=data_worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string("data_service_dir", DEFAULTS.data_service_dir,
                    "--mode=data_dispatcher: a folder for its journal (fault-tolerant mode: a restarted dispatcher "
                    "goes on with the running jobs).")
flags.DEFINE_integer("verbose", DEFAULTS.verbose, "Keras progress output: 0 silent, 1 bar, 2 one line per epoch.")


def config_from_flags() -> Config:
    """The Config whose fields are the parsed flags of the same names. `--mode=eval` of a run directory starts
    from the run's own flags (its config.json), so the model and data are the ones it trained on; flags given
    on the command line win."""
    import tensorflow as tf  # after main's quiet import of TensorFlow

    from engine import files

    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Config)}
    saved_path = os.path.join(FLAGS.model_dir, "config.json")
    if FLAGS.mode == "eval" and FLAGS.model_dir and tf.io.gfile.exists(saved_path):
        saved = {k: v for k, v in files.read_json(saved_path).items() if k in values}
        saved.update(init_checkpoint="", freeze_epochs=0)  # the run's own checkpoint is evaluated, not its start
        values = {**values, **saved, **{name: value for name, value in values.items() if FLAGS[name].present},
                  "mode": "eval"}
    return Config(**values)


def main(argv: list[str]) -> int:
    """Runs the configured mode; returns 2 with a one-line message on bad flags or data."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    budget.limit_malloc_arenas()  # before TensorFlow starts threads: keeps streaming memory flat
    quiet.import_tensorflow_quietly()
    from datasets.sources.base import DataError  # these import TensorFlow: after the quiet import above
    from engine.config import FlagError, ParityError
    from engine.recovery import NonFiniteLoss, Preempted
    from engine.run import run

    try:
        run(config_from_flags())
    except (FlagError, DataError, ParityError) as error:  # bad flags or bad data: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except Preempted as error:  # the exit status of a process ended by SIGTERM, so schedulers restart it
        print(f"[preempted] {error}", file=sys.stderr, flush=True)
        return 143
    return 0


if __name__ == "__main__":
    app.run(main)
