"""The prediction page of `--mode=serve`: an uploaded or sample image, the exported model's prediction drawn
on it, as a headline and as a table.

    streamlit run engine/page.py -- --export=EXPORT_DIR

It uses the export alone (EXPORT_DIR/saved_model's `serving_default` and `metadata` signatures, and the
validation images in EXPORT_DIR/samples), never the training code, so it shows what TensorFlow Serving would
answer for the same file. Drawing is datasets/drawing.py's (Pillow only).
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import streamlit as st
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from datasets import drawing

DRAW_CONFIDENCE = 0.25  # detection: boxes scoring at least this are drawn and listed
HEADLINE_SHARE = 0.01  # segmentation: classes covering at least this share of the pixels are in the headline
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif"]
SHOWN_PX = 448  # small images are enlarged (by a whole factor, nearest neighbour) to about this size
THUMBNAIL_PX = 96
MAX_TITLE_CLASSES = 12


def export_dir() -> str:
    """The export directory named by the script's `--export` argument."""
    parser = argparse.ArgumentParser(description="The prediction page of an exported model.")
    parser.add_argument("--export", required=True, help="an export directory (RUN/export)")
    return os.path.abspath(parser.parse_known_args()[0].export)


@st.cache_resource(show_spinner="Loading the SavedModel ...")
def load_model(saved_model: str) -> tf.Module:
    """The SavedModel at `saved_model`, loaded once per server."""
    return tf.saved_model.load(saved_model)


@st.cache_data(show_spinner=False)
def model_metadata(saved_model: str) -> dict:
    """The SavedModel's own metadata: "task", "class_names" (in label order) and "image_size"."""
    found = {name: value.numpy() for name, value in load_model(saved_model).signatures["metadata"]().items()}
    return {"task": found["task"].decode(), "class_names": [name.decode() for name in found["class_names"]],
            "image_size": int(found["image_size"])}


@st.cache_data(show_spinner="Predicting ...", max_entries=64)
def predict(saved_model: str, encoded: bytes) -> dict[str, np.ndarray]:
    """`serving_default`'s outputs for one encoded image, without the batch dimension."""
    outputs = load_model(saved_model).signatures["serving_default"](images=tf.constant([encoded]))
    return {name: value.numpy()[0] for name, value in outputs.items()}


def samples(export: str) -> list[str]:
    """The sample images' paths in EXPORT_DIR/samples, in name order."""
    folder = os.path.join(export, "samples")
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().rsplit(".", 1)[-1] in IMAGE_TYPES]


def title(task: str, class_names: list[str]) -> str:
    """The page title: the task and its classes (the first MAX_TITLE_CLASSES of many)."""
    shown = ", ".join(class_names[:MAX_TITLE_CLASSES])
    more = len(class_names) - MAX_TITLE_CLASSES
    return f"{task.capitalize()}: {shown}" + (f" and {more} more" if more > 0 else "")


def choose_image(export: str) -> tuple[str, bytes] | None:
    """The image the user chose, as (file name, bytes): an upload while there is one, else the sample picked."""
    uploaded = st.file_uploader("Upload an image", type=IMAGE_TYPES,
                                help="While an upload is here it is the image shown; remove it to pick a sample.")
    picked = pick_sample(export, disabled=uploaded is not None)
    if uploaded is not None:
        return uploaded.name, uploaded.getvalue()
    if picked is None:
        return None
    with open(picked, "rb") as f:
        return os.path.basename(picked), f.read()


def pick_sample(export: str, disabled: bool) -> str | None:
    """The sample image picked under their thumbnails, or None (after saying so) when there are none."""
    paths = samples(export)
    if not paths:
        st.info(f"No sample images in {os.path.join(export, 'samples')}: upload one.")
        return None
    st.write("Or pick one of the validation samples:")
    labels = {path: f"#{number}" for number, path in enumerate(paths, 1)}
    for column, path in zip(st.columns(len(paths)), paths):
        column.image(path, caption=labels[path], width=THUMBNAIL_PX)
    return st.radio("Sample", paths, format_func=labels.get, horizontal=True, disabled=disabled,
                    label_visibility="collapsed")


def decode(name: str, encoded: bytes) -> np.ndarray | None:
    """The image's RGB pixels (a GIF's first frame), or None after an error naming the file."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        st.error(f"{name} is not a JPEG, PNG, BMP or GIF image")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        st.error(f"{name} could not be decoded: {error}")
    return None


def enlarged(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Small `pixels` enlarged by a whole factor to about SHOWN_PX (so drawn labels stay readable), and the
    factor."""
    factor = max(1, SHOWN_PX // max(pixels.shape[:2]))
    return drawing.enlarged(pixels, factor), factor


def classification_view(found: dict[str, np.ndarray], pixels: np.ndarray, class_names: list[str]
                        ) -> tuple[str, np.ndarray, list[dict]]:
    """The top class as the headline, the top-k classes as a caption band and as table rows."""
    top = [(name.decode(), float(score)) for name, score in zip(found["names"], found["scores"])]
    picture, _ = enlarged(pixels)
    picture = drawing.caption(picture, [f"{name} {score:.2f}" for name, score in top])
    rows = [{"rank": rank, "class": name, "probability": round(score, 4)} for rank, (name, score) in enumerate(top, 1)]
    return f"Prediction: {top[0][0]} ({top[0][1]:.2f})", picture, rows


def segmentation_view(found: dict[str, np.ndarray], pixels: np.ndarray, class_names: list[str]
                      ) -> tuple[str, np.ndarray, list[dict]]:
    """The classes' pixel shares as the table rows and (those of at least HEADLINE_SHARE) the headline, the
    mask tinted over the image."""
    height, width = found["original_size"]
    mask = found["mask"][:height, :width]
    ids, counts = np.unique(mask, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = [(class_names[ids[i]], int(counts[i]), counts[i] / mask.size) for i in order]
    picture, factor = enlarged(pixels)
    picture = drawing.overlay_mask(picture, drawing.enlarged(mask, factor), class_names)
    rows = [{"class": name, "pixels": count, "share": f"{share:.1%}"} for name, count, share in shares]
    headline = ", ".join(f"{name} {share:.0%}" for name, _, share in shares if share >= HEADLINE_SHARE)
    return f"Classes: {headline}", picture, rows


def detection_view(found: dict[str, np.ndarray], pixels: np.ndarray, class_names: list[str]
                   ) -> tuple[str, np.ndarray, list[dict]]:
    """The boxes scoring at least DRAW_CONFIDENCE: counted and named in the headline, drawn, and as rows."""
    candidates = found["classes"] >= 0
    keep = candidates & (found["scores"] >= DRAW_CONFIDENCE)
    boxes, classes, scores = found["boxes"][keep], found["classes"][keep], found["scores"][keep]
    picture, factor = enlarged(pixels)
    picture = drawing.draw_boxes(picture, boxes * factor, classes, scores, class_names)
    rows = [{"class": class_names[c], "score": round(float(s), 4), "x0": round(float(b[0]), 1),
             "y0": round(float(b[1]), 1), "x1": round(float(b[2]), 1), "y1": round(float(b[3]), 1)}
            for b, c, s in zip(boxes, classes, scores)]
    return detection_headline(classes, scores, found["scores"][candidates], class_names), picture, rows


def detection_headline(classes: np.ndarray, scores: np.ndarray, candidate_scores: np.ndarray,
                       class_names: list[str]) -> str:
    """"Detections: N (name score, ...)" of the boxes kept or, when there are none, the best candidate's score."""
    if len(classes):
        named = ", ".join(f"{class_names[c]} {s:.2f}" for c, s in zip(classes, scores))
    elif candidate_scores.size:
        named = f"best score {candidate_scores.max():.2f}, below {DRAW_CONFIDENCE}"
    else:
        named = "no candidates"
    return f"Detections: {len(classes)} ({named})"


VIEWS = {"classification": classification_view, "segmentation": segmentation_view, "detection": detection_view}
TABLE_CAPTIONS = {"classification": "Top classes", "segmentation": "Pixels per class",
                  "detection": f"Boxes scoring {DRAW_CONFIDENCE} or more (original pixels)"}


def show_prediction(saved_model: str, metadata: dict, name: str, encoded: bytes) -> None:
    """The image with its prediction drawn, the headline and the table; errors name the file."""
    pixels = decode(name, encoded)
    if pixels is None:
        return
    try:
        found = predict(saved_model, encoded)
    except tf.errors.OpError as error:
        st.error(f"{name}: the model could not read it: {error.message.splitlines()[0]}")
        return
    task = metadata["task"]
    headline, picture, rows = VIEWS[task](found, pixels, metadata["class_names"])
    st.subheader(headline, anchor=False)  # before the image: once its caption names the file, this is its headline
    left, right = st.columns([3, 2])
    left.image(picture, caption=f"{name} ({pixels.shape[1]}x{pixels.shape[0]} px)")
    right.caption(TABLE_CAPTIONS[task] + ("" if rows else ": none"))
    if rows:
        right.table(rows)


def main() -> None:
    """The page."""
    export = export_dir()
    saved_model = os.path.join(export, "saved_model")
    st.set_page_config(page_title="Predictions", layout="wide")
    metadata = model_metadata(saved_model)
    st.title(title(metadata["task"], metadata["class_names"]), anchor=False)
    st.caption(f"{saved_model}: input {metadata['image_size']} px, {len(metadata['class_names'])} classes")
    chosen = choose_image(export)
    if chosen is not None:
        st.divider()
        show_prediction(saved_model, metadata, *chosen)


if __name__ == "__main__":
    main()
