"""`folder:DIR`: one sub-folder of images per class, with `train/` and `val/` sub-folders or a seeded split.

Classes are the sub-folder names, sorted as `keras.utils.image_dataset_from_directory` sorts them. Images
outside any class folder and other files inside them are not used; `--mode=inspect` lists them.
"""

from __future__ import annotations

import os

import tensorflow as tf

from datasets.sources.base import (SPLIT_DIRECTORY_NAMES, DataError, Examples, IMAGE_EXTENSIONS, Source,
                                   list_images, normalised, seeded_split)


def _list_class_folder(root: str, notes: dict[str, list[str]]) -> tuple[list[str], list[str], list[int]]:
    """Lists images under root/<class>/..., classes sorted like image_dataset_from_directory. Images outside
    any class folder and non-image files inside them go to `notes` (they are not used)."""
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(root) if not name.startswith(".")]
    folders = {name: tf.io.gfile.isdir(os.path.join(root, name)) for name in names}
    class_names = sorted(name for name, folder in folders.items() if folder)
    if not class_names:
        raise DataError(f"{root}: no class sub-folders (expected one sub-folder of images per class)")
    notes.setdefault("images_without_labels", []).extend(
        sorted(os.path.join(root, name) for name, folder in folders.items()
               if not folder and name.lower().endswith(IMAGE_EXTENSIONS)))
    paths, labels, ignored = [], [], []
    for label, name in enumerate(class_names):
        found = list_images(os.path.join(root, name), others=ignored)
        paths += found
        labels += [label] * len(found)
    if ignored:
        notes.setdefault("ignored_files", []).extend(ignored)
    if not paths:
        raise DataError(f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in {class_names}")
    return class_names, paths, labels


def _split_directories(root: str) -> dict[str, str] | None:
    """Returns {"train": dir, "val": dir} when root holds pre-split sub-folders, else None."""
    found = {}
    for split, names in SPLIT_DIRECTORY_NAMES.items():
        for name in names:
            if tf.io.gfile.isdir(os.path.join(root, name)):
                found[split] = os.path.join(root, name)
                break
    return found if "train" in found and "val" in found else None


def folder_source(directory: str, val_fraction: float, seed: int) -> Source:
    """One sub-folder per class; `train/` and `val/` sub-folders if present, else a seeded split."""
    if not tf.io.gfile.isdir(directory):
        raise DataError(f"{directory}: not a directory (--dataset=folder:PATH needs a folder of class folders)")
    split_dirs = _split_directories(directory)
    notes: dict[str, list[str]] = {}
    name = os.path.basename(normalised(directory))
    if split_dirs:
        class_names, train_paths, train_labels = _list_class_folder(split_dirs["train"], notes)
        val_classes, val_paths, val_labels = _list_class_folder(split_dirs["val"], notes)
        if val_classes != class_names:
            raise DataError(f"{split_dirs['val']}: class folders {val_classes} differ from "
                            f"{split_dirs['train']}: {class_names}")
        splits = {"train": Examples(train_paths, train_labels), "val": Examples(val_paths, val_labels)}
        return Source(name, class_names, splits, notes)
    class_names, paths, labels = _list_class_folder(directory, notes)
    return Source(name, class_names, seeded_split(Examples(paths, labels), val_fraction, seed, directory), notes)
