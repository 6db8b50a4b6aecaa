"""Box labels shared by the detection sources (`yolo.py`, `voc.py`, COCO in `polygons.py`): checking them.

Bad labels stop the run naming the file: a box with no area, a box outside its image by more than 1% of it
(YOLO) or 1 pixel (VOC, COCO), an unknown class, a malformed line, a label file without its image. With
`skip_bad_labels` the bad box alone is dropped (its image stays) and listed in `Source.notes`, with one
warning counting them. Boxes only slightly outside their image are clipped to it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np

from datasets.sources.base import DataError, Examples

YOLO_SLACK = 0.01  # fraction of the image a YOLO box may overhang it (clipped); more is an error
PIXEL_SLACK = 1.0  # pixels a VOC or COCO box may overhang its image (clipped); more is an error


class Box(NamedTuple):
    """One labelled box before its class is looked up."""

    where: str  # its file, and line or object, for messages
    name: str | int  # its class: a YOLO id or a VOC/COCO name or category id
    corners: np.ndarray  # float32 x0, y0, x1, y1, inside the image


class BadLabels:
    """The bad labels of one source: the first stops the run, or with `skip` each is dropped and listed in
    `notes` ("dropped_boxes", "labels_without_images"; "images_without_labels" lists images with no objects)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.notes: dict[str, list[str]] = {"dropped_boxes": [], "labels_without_images": [],
                                            "images_without_labels": []}

    def drop_box(self, where: str, reason: str) -> None:
        """A bad box or label line at `where`: raises DataError, or when skipping notes it as dropped."""
        if not self.skip:
            raise DataError(f"{where}: {reason} (pass --skip_bad_labels to drop them)")
        self.notes["dropped_boxes"].append(f"{where}: {reason}")

    def drop_label_file(self, where: str, reason: str) -> None:
        """Labels whose image is missing: raises DataError, or when skipping notes `where` and goes on."""
        if not self.skip:
            raise DataError(f"{where}: {reason} (pass --skip_bad_labels to drop them)")
        self.notes["labels_without_images"].append(where)

    def checked(self, where: str, corners: Sequence[float], width: float, height: float, slack: float
                ) -> np.ndarray | None:
        """`corners` (x0, y0, x1, y1) clipped to a width x height image, or None (after `drop_box`) when they
        overhang it by more than `slack` or enclose no area."""
        x0, y0, x1, y1 = corners
        shown = "[" + ", ".join(f"{value:g}" for value in corners) + "]"
        if min(x0, y0) < -slack or x1 > width + slack or y1 > height + slack:
            self.drop_box(where, f"box x0 y0 x1 y1 = {shown} is outside the {width:g}x{height:g} image")
            return None
        clipped = np.clip(np.asarray(corners, np.float32), 0.0, np.float32([width, height, width, height]))
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            self.drop_box(where, f"box x0 y0 x1 y1 = {shown} has no area")
            return None
        return clipped

    def warn(self, source: str) -> None:
        """Logs one line counting what was dropped, if anything was."""
        boxes, files = len(self.notes["dropped_boxes"]), len(self.notes["labels_without_images"])
        if boxes or files:
            logging.warning("%s: --skip_bad_labels dropped %d bad boxes and %d label files without images "
                            "(--mode=inspect lists them)", source, boxes, files)


def box_arrays(boxes: list[Box], index: dict, bad: BadLabels) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float32 [n, 4] and their classes int32 [n] (`index`: class name -> class); boxes of unknown
    classes go to `bad`."""
    kept, classes = [], []
    for box in boxes:
        if box.name not in index:
            bad.drop_box(box.where, f"unknown class {box.name!r}")
            continue
        kept.append(box.corners)
        classes.append(index[box.name])
    return np.asarray(kept, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


def detection_examples(images: list[str], boxes: list[tuple[np.ndarray, np.ndarray]], normalised: bool
                       ) -> Examples:
    """A split of detection-only images (no image labels) with their (boxes, classes)."""
    return Examples(images, [-1] * len(images), boxes=[b for b, _ in boxes], box_classes=[c for _, c in boxes],
                    boxes_normalised=normalised)
