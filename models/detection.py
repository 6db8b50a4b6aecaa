"""Detection models: keras-cv's YOLOV8Detector on a YOLOV8Backbone built from scratch, in four sizes.

uint8 images in; raw outputs {"boxes": [b, anchors, 64] distance bins, "classes": [b, anchors, classes]
sigmoid scores}; `decode_predictions` turns them into boxes (x0, y0, x1, y1 in input pixels) after non-max
suppression. The backbones are built from their channel and depth settings, never from a keras-cv preset
name (presets download from Kaggle); `--init_checkpoint` starts them from an earlier run.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np
import tensorflow as tf

# name: (backbone channels per stage, blocks per stage, FPN depth); with 5 classes 1.0M, 3.4M, 13.2M and 25.9M
# parameters. yolov8_xs and _s use keras-cv's yolo_v8_xs/_s_backbone channels; yolov8_n halves xs's widths
# (Ultralytics' nano widths) with one block per stage.
SIZES = {
    "yolov8_n": ([16, 32, 64, 128], [1, 1, 1, 1], 1),
    "yolov8_xs": ([32, 64, 128, 256], [1, 2, 2, 1], 1),
    "yolov8_s": ([64, 128, 256, 512], [1, 2, 2, 1], 2),
    "yolov8_m": ([96, 192, 384, 576], [2, 4, 4, 2], 2),
}
LARGE = {"yolov8_s", "yolov8_m"}  # sizes with the full YOLO augmentation by default (engine/tasks/detection.py)
STRIDE = 32  # the coarsest feature map's stride: input sizes must divide by it


def build_detector(name: str, num_classes: int, image_size: int, nms_iou: float = 0.7,
                   nms_confidence: float = 0.001, max_detections: int = 100) -> keras.Model:
    """The YOLOv8 detector `name` (one of SIZES) with non-max suppression at `nms_iou` for detections scoring
    at least `nms_confidence`."""
    import keras_cv  # imported here: it takes seconds and only detection (and deeplabv3plus) needs it

    if name not in SIZES:
        raise ValueError(f"--model={name} is not a detection model; choose one of {', '.join(SIZES)}")
    if image_size % STRIDE:
        raise ValueError(f"--image_size={image_size} must be a multiple of {STRIDE} for YOLOv8")
    channels, depths, fpn_depth = SIZES[name]
    backbone = keras_cv.models.YOLOV8Backbone(stackwise_channels=channels, stackwise_depth=depths,
                                              include_rescaling=True, input_shape=(image_size, image_size, 3))
    with _float32_layers():  # box assignment works on the float32 outputs
        label_encoder = keras_cv.models.yolov8.LabelEncoder(num_classes=num_classes)
    model = _detector_class()(backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy",
                              fpn_depth=fpn_depth, label_encoder=label_encoder,
                              prediction_decoder=suppression(nms_iou, nms_confidence, max_detections))
    for name in ("box", "class"):  # the head ends in float32 but these two layers would cast it back
        model.get_layer(name).dtype_policy = keras.DTypePolicy("float32")
    _initialise_head_biases(model, num_classes, image_size)
    return model


def suppression(nms_iou: float, nms_confidence: float, max_detections: int = 100) -> keras.layers.Layer:
    """keras-cv's class-agnostic non-max suppression of the detector (float32): boxes (xyxy) and class scores
    in, {"boxes", "confidence", "classes", "num_detections"} out, padded to `max_detections`."""
    import keras_cv

    with _float32_layers():
        return keras_cv.layers.NonMaxSuppression(bounding_box_format="xyxy", from_logits=False,
                                                 iou_threshold=nms_iou, confidence_threshold=nms_confidence,
                                                 max_detections=max_detections)


def decode_boxes(distances: tf.Tensor, image_size: int) -> tf.Tensor:
    """The head's box outputs ([B, anchors, 64]: 4 sides x 16 distance bins) as boxes [B, anchors, 4] (x0, y0,
    x1, y1 in input pixels): keras-cv's `decode_predictions` without its suppression, in ops TFLite converts."""
    from keras_cv.src.models.object_detection.yolo_v8 import yolo_v8_detector as yolo

    with _float32_layers():
        sides = yolo.decode_regression_to_boxes(tf.cast(distances, tf.float32))
    anchors, strides = yolo.get_anchors(image_shape=(image_size, image_size, 3))
    return yolo.dist2bbox(sides, anchors) * strides[:, None]


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The YOLOv8 backbone, what --freeze_epochs freezes (the feature pyramid and head train)."""
    return [model.backbone]


@contextlib.contextmanager
def _float32_layers():
    """Layers created inside are float32 whatever the global dtype policy (restored afterwards)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


@functools.cache
def _detector_class() -> type:
    """keras-cv's YOLOV8Detector, whose loss and box decoding build a Reshape layer as they run: under a
    mixed policy that layer computes in float16/bfloat16 and the next multiply with float32 fails
    (TypeError in decode_regression_to_boxes). Here they run with float32 layers, on the float32 outputs
    of the head; its label encoder and suppression are float32 layers too (build_detector)."""
    import keras_cv

    @keras.saving.register_keras_serializable(package="tfdata_engine")
    class YOLOV8Detector(keras_cv.models.YOLOV8Detector):
        def compute_loss(self, x, y, y_pred, sample_weight=None, **kwargs):
            with _float32_layers():
                return super().compute_loss(x, y, y_pred, sample_weight=sample_weight, **kwargs)

        def decode_predictions(self, pred, images):
            with _float32_layers():
                return super().decode_predictions(pred, images)

    return YOLOV8Detector


def _initialise_head_biases(model: keras.Model, num_classes: int, image_size: int) -> None:
    """Ultralytics' start for the YOLOv8 head, which keras-cv leaves at zero: box distances 1, and class scores
    at a prior of 5 objects per image spread over the cells of each level (not 0.5 on every cell)."""
    for level in range(3):  # P3, P4, P5 at strides 8, 16, 32
        cells = (image_size / (8 * 2 ** level)) ** 2
        classes = model.get_layer(f"yolo_v8_head_{level + 1}_class_3_conv")
        classes.bias.assign(np.full(num_classes, np.log(5 / num_classes / cells), np.float32))
        boxes = model.get_layer(f"yolo_v8_head_{level + 1}_box_3_conv")
        boxes.bias.assign(np.ones(boxes.bias.shape, np.float32))
