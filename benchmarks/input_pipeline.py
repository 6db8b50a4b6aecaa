"""Input pipeline throughput against what users do today, in one run, with ratios and peak RSS.

Generates (once) a folder of JPEGs (about 400x400, quality 90, 10 classes), then measures batches of 64 at
224x224 with random crop, horizontal flip and rescale to [0, 1]. The variants run in --repeats interleaved
rounds (so drift of the machine hits all of them alike); in each round every variant runs in a fresh process
(so its peak RSS is its own) and times --batches batches after a warm-up. Reported: the median images/s over
the rounds and the largest peak RSS.

    pip install -e ".[bench]"   # scipy, which ImageDataGenerator's random shifts need
    python benchmarks/input_pipeline.py --num_images=2000 --repeats=3

Variants:
  ceiling         a per-image loop of decode_jpeg + resize (no crop) in a process pinned to one core; one such
                  process per core, all timed at once (after a barrier), their rates summed: the 1-core loop
                  times the number of cores, under the same all-cores-busy conditions as every other variant
  ceiling_alone   one such process with the other cores idle, its rate times the number of cores (an idle
                  neighbour leaves it the shared cache, memory bandwidth and clock boost: measured 10-35%
                  above `ceiling` here, varying from run to run)
  ceiling_graph   the `ceiling` loop as a sequential tf.data map on a 1-thread pool (no eager overhead), one
                  process per core at once: a stricter ceiling
  reference       a hand-written best-practice tf.data pipeline: list the files, shuffle, one map of
                  sample_distorted_bounding_box (area 8-100%, aspect 3/4-4/3, 10 attempts) fused into
                  decode_and_crop_jpeg, resize, random flip, float32 / 255 (parallel, not deterministic), batch,
                  prefetch: nothing else
  folder          this project's pipeline on the folder: Inception random-resized crop (area 8-100%) fused
                  with decoding (decode_and_crop_jpeg); DCT-scaled decoding as the engine plans it (`--dct_decode`:
                  off for these ~400 px files at 224, as for every folder row)
  folder_mild     the same with the engine's default crop area for small images (50-100%)
  folder_jitter   `folder` with the small models' default colour jitter (brightness, contrast, saturation 0.2)
  tfrecord        `folder` on TFRecord shards written by the converter
  cache           `folder` with --cache=memory (decoded at 256 px; the same random-resized crops of the cached
                  images, resized to 224), second epoch onwards
  idfd            keras.utils.image_dataset_from_directory (at 256 px) + Keras 3 preprocessing layers
                  RandomCrop, RandomFlip, Rescaling in the map, as the Keras guides show
  idfd_tfimage    image_dataset_from_directory (at 256 px) + the same crop/flip/rescale as tf.image ops
  imagedatagen    tf.keras ImageDataGenerator(rescale, horizontal_flip, width_shift_range=16,
                  height_shift_range=16).flow_from_directory at 224 px: a random shift of up to 16 px is
                  ImageDataGenerator's way to take a random 224 crop (it has no crop option)
  imagedatagen_nocrop  the same without the shifts (flip and rescale only): not the benchmark's task, shown
                  to separate ImageDataGenerator's loading from its augmentation
  pydataset       a keras.utils.PyDataset reading, cropping and flipping with PIL
  cls_randaugment_mixup  `folder` plus RandAugment (2 operations, magnitude 9) and MixUp (alpha 0.2)
  segmentation    images with their class-index PNG masks: letterbox, random zoom 0.5-2 / position / flip of
                  image and mask, colour jitter
  detection_mosaic  images with their boxes (8 per image, padded): letterbox, Mosaic of 4, random zoom
                  0.5-1.5 / position / flip, HSV jitter
  large_crop      `folder` on generated 1600x1200 photos (--num_large of them): random-resized crops decoded at
                  the DCT scale that keeps the crop >= 224 (1/2, 1/4 or 1/8)
  large_crop_fullscale  the same decoded at full scale (the engine before DCT scaling)
  large_letterbox  the detection evaluation pipeline on the same photos: decode and letterbox to 640 (DCT scale
                  1/2 for 1600 px), batches of 64
  large_letterbox_fullscale  the same decoded at full scale
  large_pixels    (not timed) how far DCT-scaled outputs are from full-scale decoding with an antialiased
                  resize, and from the full-scale pipeline's own (bilinear, aliased) output
  stream_rss      `folder`, and `tfrecord` with a 16 MB shuffle budget (smaller than the data), each streamed
                  for 10 epochs: resident memory after each epoch
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import quiet  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "/tmp/tfdata-engine-bench/scenes", "Where the generated JPEG folder is kept.")
flags.DEFINE_integer("num_images", 2000, "Images to generate.")
flags.DEFINE_integer("num_large", 160, "1600x1200 photos to generate for the large_* rows.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Output size.")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds; each times every variant once (the median is reported).")
flags.DEFINE_integer("batches", 40, "Batches per timed repetition (slow peers use a quarter).")
flags.DEFINE_list("variants", ["ceiling", "ceiling_alone", "ceiling_graph", "reference", "folder", "folder_mild", "folder_jitter", "tfrecord", "cache", "idfd", "idfd_tfimage",
                                "imagedatagen", "imagedatagen_nocrop", "pydataset", "cls_randaugment_mixup", "segmentation",
                                "detection_mosaic", "large_crop", "large_crop_fullscale", "large_letterbox",
                                "large_letterbox_fullscale", "large_pixels", "stream_rss"],
                  "Variants to run.")
flags.DEFINE_string("only", "", "Internal: run one variant in this process and print its JSON result.")
flags.DEFINE_integer("core", -1, "Internal: pin this process to this core (the ceilings).")
flags.DEFINE_string("barrier", "", "Internal: directory where concurrent ceiling processes meet before timing.")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")

SLOW = {"imagedatagen", "imagedatagen_nocrop", "pydataset", "large_crop", "large_crop_fullscale", "large_letterbox",
        "large_letterbox_fullscale"}
OURS = {"folder", "folder_mild", "folder_jitter", "tfrecord", "cache", "stream_rss", "cls_randaugment_mixup", "segmentation",
        "detection_mosaic", "large_crop", "large_crop_fullscale", "large_letterbox", "large_letterbox_fullscale"}
LARGE = (1200, 1600)  # height, width of the large_* rows' photos


def _dense_variants(size: int) -> dict:
    """The augmentation rows: the recipe per variant, at the engine's default strengths."""
    from datasets.recipes import Augment, ClassificationRecipe, DetectionRecipe, SegmentationRecipe

    return {
        "cls_randaugment_mixup": ClassificationRecipe(size, Augment(crop_scale=(0.08, 1.0), randaugment_ops=2,
                                                                    randaugment_magnitude=9, mixup=0.2,
                                                                    num_classes=10)),
        "segmentation": SegmentationRecipe(size, Augment(scale=(0.5, 2.0), brightness=0.2, contrast=0.2,
                                                         saturation=0.2)),
        "detection_mosaic": DetectionRecipe(size, Augment(scale=(0.5, 1.5), translate=0.2, mosaic=1.0, brightness=0.4,
                                                          saturation=0.7, hue=0.015), max_boxes=8),
    }


def generate(directory: str, count: int) -> None:
    """Writes `count` JPEGs of 360-440 px, quality 90, in 10 class folders (once): the shapes generator's
    textured, noisy scenes (sensor-like noise and edges, so they decode like photos, not like smooth blobs).
    Their class-index masks (PNG) and boxes go to `directory`-labels, for the segmentation and detection rows."""
    import numpy as np
    import tensorflow as tf

    from datasets.sources import shapes_draw

    labels_dir = directory + "-labels"
    write_images = not os.path.exists(os.path.join(directory, "done"))
    if not write_images and os.path.exists(os.path.join(labels_dir, "done")):
        return
    os.makedirs(labels_dir, exist_ok=True)
    rng, annotations = np.random.default_rng(0), []
    for i in range(count):
        height, width = rng.integers(360, 441, size=2)
        image, mask, annotation = shapes_draw.make_example(rng, 440)
        path = os.path.join(directory, f"class_{i % 10}", f"{i:05d}.jpg")
        if write_images:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tf.io.write_file(path, tf.io.encode_jpeg(image[:height, :width], quality=90))
        mask_path = os.path.join(labels_dir, f"{i:05d}.png")
        tf.io.write_file(mask_path, tf.io.encode_png(mask[:height, :width, None]))
        boxes = np.minimum(np.asarray(annotation["boxes"], np.float32).reshape(-1, 4), [width, height] * 2)
        keep = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)  # objects cut off by the crop
        annotations.append({"image": path, "mask": mask_path, "label": i % 10, "boxes": boxes[keep].tolist(),
                            "box_classes": np.asarray(annotation["box_classes"])[keep].tolist()})
    with open(os.path.join(labels_dir, "annotations.json"), "w") as f:
        json.dump(annotations, f)
    open(os.path.join(directory, "done"), "w").close()
    open(os.path.join(labels_dir, "done"), "w").close()


def generate_large(directory: str, count: int) -> None:
    """Writes `count` 1600x1200 JPEGs (quality 90, the shapes generator's textured scenes drawn at that size) with
    their boxes in annotations.json (once)."""
    import numpy as np
    import tensorflow as tf

    from datasets.sources import shapes_draw

    if os.path.exists(os.path.join(directory, "done")):
        return
    rng, annotations = np.random.default_rng(1), []
    height, width = LARGE
    for i in range(count):
        image, _, annotation = shapes_draw.make_example(rng, width)
        path = os.path.join(directory, f"class_{i % 10}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_jpeg(image[:height], quality=90))
        boxes = np.minimum(np.asarray(annotation["boxes"], np.float32).reshape(-1, 4), [width, height] * 2)
        keep = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        annotations.append({"image": path, "label": i % 10, "boxes": boxes[keep].tolist(),
                            "box_classes": np.asarray(annotation["box_classes"])[keep].tolist()})
    with open(os.path.join(directory, "annotations.json"), "w") as f:
        json.dump(annotations, f)
    open(os.path.join(directory, "done"), "w").close()


def _large_split():
    """The large photos with their boxes, as a split of loose files."""
    import numpy as np

    from datasets.sources.base import Examples

    with open(os.path.join(FLAGS.data + "-large", "annotations.json")) as f:
        records = json.load(f)
    return Examples(paths=[r["image"] for r in records], labels=[r["label"] for r in records],
                    boxes=[np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records],
                    box_classes=[np.asarray(r["box_classes"], np.int32) for r in records])


def large_pixels(count: int = 32) -> dict:
    """Mean and 99th-percentile absolute pixel differences (0-255) of DCT-scaled decoding against full-scale
    decoding with an antialiased resize, and against the full-scale pipeline (bilinear resize), for the
    classification evaluation resize to 224 and the letterbox to 640."""
    import numpy as np
    import tensorflow as tf

    from datasets.ops import decode, spatial

    paths = _large_split().paths[:count]
    steps = {"resize_224": lambda ratios: decode.decode_resize(224, ratios),
             "letterbox_640": lambda ratios: compose_letterbox(decode, spatial, ratios)}
    result = {"variant": "large_pixels"}
    for name, make in steps.items():
        scaled, full, exact = [], [], []
        for path in paths:
            example = {"encoded": tf.io.read_file(path), "id": tf.constant(path)}
            scaled.append(make(decode.DCT_RATIOS)(example)["image"].numpy().astype(np.float32))
            full.append(make(())(example)["image"].numpy().astype(np.float32))
            pixels = tf.io.decode_jpeg(example["encoded"], channels=3)
            if name == "resize_224":
                exact.append(tf.image.resize(pixels, [224, 224], antialias=True).numpy())
            else:  # the letterboxed photo's area: 640x480 at the top-left corner offset of the letterbox
                top = (640 - 480) // 2
                exact.append(np.pad(tf.image.resize(pixels, [480, 640], antialias=True).numpy(),
                                    [[top, 640 - 480 - top], [0, 0], [0, 0]], constant_values=spatial.FILL))
        scaled, full, exact = np.stack(scaled), np.stack(full), np.round(np.stack(exact))
        for reference_name, reference in (("antialiased", exact), ("fullscale_pipeline", full)):
            difference = np.abs(scaled - reference)
            result[f"{name}_vs_{reference_name}"] = {"mean": float(difference.mean()),
                                                     "p99": float(np.percentile(difference, 99))}
        result[f"{name}_fullscale_pipeline_vs_antialiased"] = {"mean": float(np.abs(full - exact).mean()),
                                                               "p99": float(np.percentile(np.abs(full - exact), 99))}
    return result


def compose_letterbox(decode, spatial, dct_ratios):
    """The detection recipe's letterbox to 640 (decode at the size it needs, then letterbox)."""
    from datasets.recipes import compose

    return compose(decode.decode_for_size(640, dct_ratios=dct_ratios), spatial.letterbox(640, 255))


def _as_planned(recipe, split):
    """`recipe` with the JPEG DCT scales the engine's plan gives training on `split` (`--dct_decode` unset)."""
    import dataclasses

    from datasets import profile
    from datasets.ops import decode
    from engine import plan

    scaled, _ = plan.dct_decode(profile.measure(split), recipe.image_size)
    return dataclasses.replace(recipe, dct_ratios=decode.DCT_RATIOS if scaled else ())


def _labelled_split():
    """The benchmark images with their masks and boxes, as a split of loose files."""
    import numpy as np

    from datasets.sources.base import Examples

    with open(os.path.join(FLAGS.data + "-labels", "annotations.json")) as f:
        records = json.load(f)
    return Examples(paths=[r["image"] for r in records], labels=[r["label"] for r in records],
                            mask_paths=[r["mask"] for r in records],
                            boxes=[np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records],
                            box_classes=[np.asarray(r["box_classes"], np.int32) for r in records])


def _crop_flip_rescale(image, size):
    import tensorflow as tf

    image = tf.image.random_crop(image, [size, size, 3])
    return tf.cast(tf.image.random_flip_left_right(image), tf.float32) / 255.0


def _reference(paths: list[str], labels: list[int], size: int, batch: int):
    """The hand-written reference pipeline (see the module docstring)."""
    import tensorflow as tf

    def load(path, label):
        encoded = tf.io.read_file(path)
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(encoded), tf.zeros([1, 0, 4]), min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        image = tf.image.resize(tf.io.decode_and_crop_jpeg(encoded, window, channels=3), [size, size])
        return tf.image.random_flip_left_right(image) / 255.0, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths)).repeat()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _iterator(variant: str):
    """An iterator over batches for `variant` (a generator for the Python peers)."""
    import numpy as np
    import tensorflow as tf

    from datasets import pipeline
    from datasets.recipes import Augment, ClassificationRecipe
    from datasets.sources import folder as folder_source
    from datasets.sources import tfrecord

    size, batch = FLAGS.image_size, FLAGS.batch_size
    folder = folder_source.folder_source(FLAGS.data, val_fraction=0.01, seed=0)
    rescale = lambda b: {**b, "image": tf.cast(b["image"], tf.float32) / 255.0}  # noqa: E731
    if variant in ("cls_randaugment_mixup", "segmentation", "detection_mosaic"):
        split = _labelled_split()
        config = pipeline.PipelineConfig(_as_planned(_dense_variants(size)[variant], split), global_batch_size=batch,
                                         training=True)
        return iter(pipeline.build_dataset(split, config).map(rescale))
    if variant in ("folder", "folder_mild", "folder_jitter", "tfrecord", "cache"):
        split = folder.splits["train"]
        if variant == "tfrecord":
            shards = FLAGS.data + "-tfrecord"
            if not os.path.exists(os.path.join(shards, "metadata.json")):
                tfrecord.convert(folder, shards, num_shards=16)
            split = tfrecord.tfrecord_source(shards).splits["train"]
        jitter = 0.2 if variant == "folder_jitter" else 0.0
        crop = Augment(crop_scale=(0.5, 1.0) if variant == "folder_mild" else (0.08, 1.0), brightness=jitter,
                       contrast=jitter, saturation=jitter)
        config = pipeline.PipelineConfig(_as_planned(ClassificationRecipe(size, crop), split), global_batch_size=batch,
                                         training=True, cache="memory" if variant == "cache" else "none")
        ds = pipeline.build_dataset(split, config).map(rescale)
        if variant == "cache":  # fill the cache: one full epoch before timing
            ds = ds.skip(len(split) // batch)
        return iter(ds)
    if variant.startswith("large_"):
        from datasets.ops import decode
        from datasets.recipes import DetectionRecipe

        ratios = () if variant.endswith("_fullscale") else decode.DCT_RATIOS
        if variant.startswith("large_crop"):
            recipe = ClassificationRecipe(size, Augment(crop_scale=(0.08, 1.0)), ratios)
            config = pipeline.PipelineConfig(recipe, global_batch_size=batch, training=True)
            return iter(pipeline.build_dataset(_large_split(), config))
        config = pipeline.PipelineConfig(DetectionRecipe(640, dct_ratios=ratios), global_batch_size=batch,
                                         training=False)
        return iter(pipeline.build_dataset(_large_split(), config).repeat())
    if variant == "reference":
        return iter(_reference(folder.splits["train"].paths, folder.splits["train"].labels, size, batch))
    if variant in ("ceiling", "ceiling_alone"):
        def loop():
            paths = folder.splits["train"].paths
            for start in range(0, 10**9, batch):
                yield [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(paths[(start + i) % len(paths)]), channels=3),
                                       [size, size]) for i in range(batch)]
        return loop()
    if variant == "ceiling_graph":
        paths = tf.data.Dataset.from_tensor_slices(folder.splits["train"].paths).repeat()
        ds = paths.map(lambda p: tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3), [size, size]))
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.autotune.enabled = False
        return iter(ds.batch(batch).with_options(options))
    if variant in ("idfd", "idfd_tfimage"):
        import keras

        ds = keras.utils.image_dataset_from_directory(FLAGS.data, batch_size=None, image_size=(256, 256),
                                                      shuffle=True, seed=0, verbose=False).repeat()
        if variant == "idfd_tfimage":
            ds = ds.map(lambda x, y: (_crop_flip_rescale(x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
            return iter(ds.batch(batch).prefetch(tf.data.AUTOTUNE))
        augment = keras.Sequential([keras.layers.RandomCrop(size, size), keras.layers.RandomFlip("horizontal"),
                                    keras.layers.Rescaling(1 / 255.0)])
        ds = ds.batch(batch).map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        return iter(ds.prefetch(tf.data.AUTOTUNE))
    if variant in ("imagedatagen", "imagedatagen_nocrop"):
        ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator  # noqa: N806 (a class)

        shift = {} if variant == "imagedatagen_nocrop" else {"width_shift_range": 16, "height_shift_range": 16}
        generator = ImageDataGenerator(rescale=1 / 255.0, horizontal_flip=True, **shift)
        return generator.flow_from_directory(FLAGS.data, target_size=(size, size), batch_size=batch, seed=0)
    if variant == "pydataset":
        import keras
        from PIL import Image

        paths = folder.splits["train"].paths
        rng = np.random.default_rng(0)

        class PILDataset(keras.utils.PyDataset):
            def __len__(self):
                return len(paths) // batch

            def __getitem__(self, index):
                images = []
                for path in paths[index * batch:(index + 1) * batch]:
                    with Image.open(path) as image:
                        image = image.convert("RGB").resize((256, 256))
                    array = np.asarray(image)
                    y, x = rng.integers(0, 256 - size + 1, size=2)
                    array = array[y:y + size, x:x + size]
                    images.append(array[:, ::-1] if rng.random() < 0.5 else array)
                return np.stack(images).astype(np.float32) / 255.0

        dataset = PILDataset()
        return (dataset[i % len(dataset)] for i in range(10**9))
    raise ValueError(f"unknown variant {variant}")


def _peak_resident_mb() -> float:
    """This process image's peak resident MB: VmHWM (getrusage's ru_maxrss starts at the parent's peak when
    the parent's memory was larger, since Linux keeps it across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def stream_rss(epochs: int = 10) -> dict:
    """Streams the folder and TFRecord pipelines (shuffle budget 16 MB, below the data); RSS after each epoch."""
    os.environ["ENGINE_SHUFFLE_BUDGET_MB"] = "16"
    from datasets import pipeline
    from datasets.recipes import Augment, ClassificationRecipe
    from datasets.sources import folder, tfrecord

    result = {"variant": "stream_rss"}
    for name in ("folder", "tfrecord"):
        if name == "folder":
            split = folder.folder_source(FLAGS.data, val_fraction=0.01, seed=0).splits["train"]
        else:
            split = tfrecord.tfrecord_source(FLAGS.data + "-tfrecord").splits["train"]
            result["data_mb"] = sum(os.path.getsize(f) for f in split.files) / (1 << 20)
        config = pipeline.PipelineConfig(ClassificationRecipe(FLAGS.image_size, Augment(crop_scale=(0.08, 1.0))),
                                         global_batch_size=FLAGS.batch_size, training=True)
        iterator = iter(pipeline.build_dataset(split, config))
        resident = []
        for _ in range(epochs):
            for _ in range(len(split) // FLAGS.batch_size):
                next(iterator)
            resident.append(_resident_mb())
        result[name] = resident
    return result


def run_variant(variant: str) -> dict:
    """Times --batches batches of `variant` in this process after a warm-up; returns images/s and peak RSS."""
    iterator = _iterator(variant)
    batches = max(2, FLAGS.batches // 4) if variant in SLOW else FLAGS.batches
    for _ in range(3):
        next(iterator)  # warm-up: tracing, thread pools, file cache
    if FLAGS.barrier:  # concurrent ceilings: start timing together
        open(os.path.join(FLAGS.barrier, f"ready-{FLAGS.core}"), "w").close()
        while len(os.listdir(FLAGS.barrier)) < (os.cpu_count() or 1):
            time.sleep(0.01)
    rss_before = _peak_resident_mb()
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * FLAGS.batch_size / (time.perf_counter() - start)
    rss_after = _peak_resident_mb()
    return {"variant": variant, "images_per_second": rate, "peak_rss_mb": rss_after,
            "rss_growth_while_timed_mb": rss_after - rss_before}


CONCURRENT = {"ceiling", "ceiling_graph"}  # one pinned process per core, timed at once, rates summed


def _in_subprocess(variant: str) -> dict | None:
    """Runs `variant` in fresh processes (one per core for CONCURRENT, pinned); its result, or None (with the
    error printed) if it failed."""
    args = [sys.executable, os.path.abspath(__file__), f"--only={variant}", f"--data={FLAGS.data}",
            f"--batch_size={FLAGS.batch_size}", f"--image_size={FLAGS.image_size}", f"--batches={FLAGS.batches}"]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    with tempfile.TemporaryDirectory() as barrier:
        if variant in CONCURRENT:
            commands = [args + [f"--core={core}", f"--barrier={barrier}"] for core in cores]
        else:
            commands = [args + ([f"--core={cores[0]}"] if variant == "ceiling_alone" else [])]
        processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        outputs = [p.communicate() for p in processes]
    results = []
    for stdout, stderr in outputs:
        line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{variant}: failed\n{stderr[-2000:]}", flush=True)
            return None
        results.append(json.loads(line[len("RESULT "):]))
    if variant == "ceiling_alone":
        results[0]["images_per_second"] *= len(cores)
    return {**results[0], "images_per_second": sum(r["images_per_second"] for r in results)} if len(results) > 1 \
        else results[0]


def _summarise(runs: list[dict]) -> dict:
    """Median images/s over the rounds, largest peak RSS."""
    rates = [run["images_per_second"] for run in runs]
    return {"images_per_second": statistics.median(rates), "runs": rates,
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
            "rss_growth_while_timed_mb": max(run["rss_growth_while_timed_mb"] for run in runs)}


def main(argv: list[str]) -> None:
    """Runs every variant in a fresh process per round and prints the table of rates, ratios and peak RSS."""
    del argv
    if FLAGS.only in OURS:
        from datasets import budget

        budget.limit_malloc_arenas()  # as launch.py does for this project's pipeline
    if FLAGS.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {FLAGS.core})  # before TF starts its threads
    quiet.import_tensorflow_quietly()
    if FLAGS.only:
        untimed = {"stream_rss": stream_rss, "large_pixels": large_pixels}
        result = untimed[FLAGS.only]() if FLAGS.only in untimed else run_variant(FLAGS.only)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if any(v.startswith("imagedatagen") for v in FLAGS.variants):
        if importlib.util.find_spec("scipy") is None:  # ImageDataGenerator's random shifts need it
            sys.exit('ImageDataGenerator needs scipy: pip install -e ".[bench]" (or drop it from --variants)')
    generate(FLAGS.data, FLAGS.num_images)
    if any(v.startswith("large_") for v in FLAGS.variants):
        generate_large(FLAGS.data + "-large", FLAGS.num_large)
    timed = [v for v in FLAGS.variants if v not in ("stream_rss", "large_pixels")]
    runs: dict[str, list[dict]] = {v: [] for v in timed}
    for round_index in range(FLAGS.repeats):
        for variant in timed:
            result = _in_subprocess(variant)
            if result is not None:
                runs[variant].append(result)
                print(f"  round {round_index + 1}/{FLAGS.repeats} {variant}: "
                      f"{result['images_per_second']:.0f} img/s", flush=True)
    results = {v: _summarise(r) for v, r in runs.items() if r}
    ceiling = results.get("ceiling", {}).get("images_per_second")
    peers = {k: results[k]["images_per_second"] for k in ("reference", "folder", "idfd", "idfd_tfimage", "imagedatagen",
                                                          "pydataset") if k in results}
    print(f"\n{os.cpu_count()} cores, {FLAGS.num_images} JPEGs ~400x400 q90 -> batches of {FLAGS.batch_size} at "
          f"{FLAGS.image_size}px, crop+flip+rescale; median of {FLAGS.repeats} interleaved rounds")
    header = f"{'variant':22s} {'img/s':>8s} {'x ceiling':>10s} " + " ".join(f"{'x ' + k:>15s}" for k in peers)
    print(header + f" {'peak RSS MB':>12s} {'RSS growth MB':>14s}")
    for name, result in results.items():
        rate = result["images_per_second"]
        ratios = " ".join(f"{rate / peer:15.2f}" for peer in peers.values())
        print(f"{name:22s} {rate:8.0f} {rate / ceiling if ceiling else float('nan'):10.2f} {ratios} "
              f"{result['peak_rss_mb']:12.0f} {result['rss_growth_while_timed_mb']:14.1f}")
    for row in ("large_crop", "large_letterbox"):
        if row in results and f"{row}_fullscale" in results:
            print(f"{row}: {results[row]['images_per_second'] / results[row + '_fullscale']['images_per_second']:.2f}x "
                  "the same pipeline decoding at full scale")
    if "large_pixels" in FLAGS.variants:
        pixels = _in_subprocess("large_pixels")
        if pixels:
            print("\nabsolute pixel difference (0-255) of DCT-scaled decoding, mean / 99th percentile:")
            for key, value in pixels.items():
                if key != "variant":
                    print(f"  {key:50s} {value['mean']:6.2f} / {value['p99']:6.1f}")
            results["large_pixels"] = pixels
    if "stream_rss" in FLAGS.variants:
        stream = _in_subprocess("stream_rss")
        if stream:
            print(f"\nresident MB after each of 10 epochs, shuffle budget 16 MB, data {stream['data_mb']:.0f} MB:")
            for name in ("folder", "tfrecord"):
                print(f"  {name:9s} " + ", ".join(f"{mb:.0f}" for mb in stream[name]))
            results["stream_rss"] = stream
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
