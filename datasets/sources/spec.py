"""`--dataset=KIND[:PATH]`: parses the spec and loads the source it names.

Kinds: `shapes[:DIR]`, `folder:DIR` (a folder per class), `tfrecord:DIR` (the converter's shards), `tfds:NAME`,
`idx:DIR` (MNIST files), `masks:DIR`, `labelme:DIR` and `coco:ANNOTATIONS.json` (masks; COCO boxes too), and
the detection labels `yolo:DATA.yaml` or `yolo:DIR` (YOLO txt) and `voc:DIR` (Pascal VOC XML).
"""

from __future__ import annotations

import os

from datasets.sources import folder, idx, masks, polygons, shapes, tfds, tfrecord, voc, yolo
from datasets.sources.base import DataError, Source

KINDS = ("shapes", "folder", "tfrecord", "tfds", "idx", "masks", "labelme", "coco", "yolo", "voc")


def parse(spec: str) -> tuple[str, str]:
    """Splits "KIND:PATH" (PATH may itself hold colons); a bare "shapes" has an empty path."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS:
        raise DataError(f"--dataset={spec}: unknown kind {kind!r}; use one of {', '.join(KINDS)} as KIND:PATH")
    if kind != "shapes" and not path:
        raise DataError(f"--dataset={spec}: {kind} needs a path, as --dataset={kind}:PATH")
    return kind, os.path.expanduser(path)


def load(spec: str, cache_dir: str, val_fraction: float = 0.2, seed: int = 0, data_dir: str = "",
         tfds_download: bool = False, mask_dirs: tuple[str, str] = ("images", "masks"),
         mask_classes: list[str] | None = None, skip_bad_files: bool = False,
         skip_bad_labels: bool = False) -> Source:
    """The source named by `spec`; `shapes` is generated under `cache_dir` on first use; `tfds` reads
    `data_dir` and downloads only with `tfds_download`; `masks` pairs the `mask_dirs` folders; `yolo`, `voc`
    and `coco` drop bad boxes with `skip_bad_labels` (else they stop the run)."""
    kind, path = parse(spec)
    if kind == "masks":
        return masks.masks_source(path, *mask_dirs, mask_classes, val_fraction, seed, skip_bad_files)
    if kind == "labelme":
        return polygons.labelme_source(path, cache_dir, mask_classes, val_fraction, seed)
    if kind == "coco":
        return polygons.coco_source(path, cache_dir, val_fraction=val_fraction, seed=seed,
                                    skip_bad_labels=skip_bad_labels)
    if kind == "yolo":
        return yolo.yolo_source(path, skip_bad_labels)
    if kind == "voc":
        return voc.voc_source(path, skip_bad_labels, val_fraction=val_fraction, seed=seed)
    if kind == "shapes":
        return shapes.shapes_source(path or shapes.default_directory(cache_dir))
    if kind == "tfrecord":
        return tfrecord.tfrecord_source(path)
    if kind == "idx":
        return idx.idx_source(path)
    if kind == "tfds":
        return tfds.tfds_source(path, data_dir, tfds_download, val_fraction)
    return folder.folder_source(path, val_fraction, seed)
