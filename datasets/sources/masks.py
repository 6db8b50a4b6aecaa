"""`--dataset=masks:DIR`: images and class-index PNG masks in two folders, matched by file stem.

    DIR/images/*.jpg|png     (`--mask_dirs=IMAGES,MASKS` names other folders, e.g. CamVid's val,valannot)
    DIR/masks/*.png          mask pixel value = class index; `--ignore_value` marks unlabelled pixels
    DIR/classes.txt          one class name per line, in index order (or `--mask_classes=a,b,...`)

There is no split in the layout: `--val_fraction` of the pairs (seeded) is held out for validation.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from datasets.sources.base import IMAGE_EXTENSIONS, DataError, Examples, Source, read_class_names, seeded_split


def _by_stem(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    if not tf.io.gfile.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in sorted(tf.io.gfile.listdir(folder))
            if name.lower().endswith(extensions)}


def masks_source(directory: str, image_dir: str = "images", mask_dir: str = "masks",
                 class_names: list[str] | None = None, val_fraction: float = 0.2, seed: int = 0,
                 skip_unmatched: bool = False) -> Source:
    """Image/mask pairs under `directory`. Images without a mask (and masks without an image) stop the run
    with their names, or with `skip_unmatched` are left out, counted and logged."""
    listed = os.path.join(directory, "classes.txt")
    names = list(class_names or []) or read_class_names(listed)
    if not names:
        raise DataError(f"{directory}: name the mask classes in {listed} (one per line, in index order) "
                        "or with --mask_classes=NAME,NAME,...")
    images = _by_stem(os.path.join(directory, image_dir), IMAGE_EXTENSIONS)
    masks = _by_stem(os.path.join(directory, mask_dir), (".png",))
    notes = {"images_without_masks": sorted(images[s] for s in images.keys() - masks.keys()),
             "masks_without_images": sorted(masks[s] for s in masks.keys() - images.keys())}
    unmatched = notes["images_without_masks"] + notes["masks_without_images"]
    if unmatched and not skip_unmatched:
        listing = "".join(f"\n  {path}" for path in unmatched[:20])
        raise DataError(f"{len(unmatched)} files in {directory} have no partner (pass --skip_bad_files to leave "
                        f"them out):{listing}")
    if unmatched:
        logging.warning("left out %d unmatched files: %s", len(unmatched), ", ".join(unmatched[:20]))
    stems = sorted(images.keys() & masks.keys())
    pairs = Examples(paths=[images[s] for s in stems], labels=[0] * len(stems), mask_paths=[masks[s] for s in stems])
    source = f"masks:{directory}"
    return Source(source, names, seeded_split(pairs, val_fraction, seed, source), notes, mask_class_names=names)
