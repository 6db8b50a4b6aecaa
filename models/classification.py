"""Image classifiers. Every model takes uint8 (or float) pixels in [0, 255] and returns float32 logits.

Keeping pixel scaling inside the model lets the input pipeline ship uint8 batches (4x less host-to-device
traffic than float32) and makes exported models take raw pixels.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers



@keras.saving.register_keras_serializable(package="engine")
class CaffePreprocessing(layers.Layer):
    """RGB [0, 255] to BGR minus the ImageNet mean, the input keras.applications.ResNet50 weights expect."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)[..., ::-1]
        return x - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], self.compute_dtype)


def _as_float():
    return layers.Rescaling(1.0, name="to_float")  # for backbones that scale [0, 255] themselves


APPLICATIONS = {
    # name: (constructor, input layer mapping uint8 [0, 255] to what the backbone expects)
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, _as_float),
    "mobilenet_v3_large": (keras.applications.MobileNetV3Large, _as_float),
    "efficientnet_b0": (keras.applications.EfficientNetB0, _as_float),
    "efficientnet_v2_b0": (keras.applications.EfficientNetV2B0, _as_float),
    "convnext_tiny": (keras.applications.ConvNeXtTiny, _as_float),
    "resnet50": (keras.applications.ResNet50, lambda: CaffePreprocessing(name="caffe_preprocessing")),
    "resnet50_v2": (keras.applications.ResNet50V2, lambda: layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit")),
}


def _conv_bn_relu(x, filters: int, stride: int = 1, name: str = ""):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _logits(x, num_classes: int, dropout: float):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("linear", dtype="float32", name="logits_float32")(x)


def _pixels(image_size: int):
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    return inputs, layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)


TINY = 32  # inputs this small keep their resolution through the stem (as CIFAR networks do)


def small_cnn(num_classes: int, image_size: int, width: int = 16, dropout: float = 0.1) -> keras.Model:
    """A plain 3x3-conv network (stem, 4 stages of 2 convs, BN, ReLU) that learns shapes on a CPU; the stem
    strides 2 unless the input is TINY."""
    inputs, x = _pixels(image_size)
    x = _conv_bn_relu(x, width, stride=1 if image_size <= TINY else 2, name="stem")
    for stage, filters in enumerate((width, width * 2, width * 4, width * 8)):
        x = _conv_bn_relu(x, filters, stride=1 if stage == 0 else 2, name=f"stage{stage}_a")
        x = _conv_bn_relu(x, filters, name=f"stage{stage}_b")
    return keras.Model(inputs, _logits(x, num_classes, dropout), name="small_cnn")


def _basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = _conv_bn_relu(x, filters, stride, name=f"{name}_1")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(gamma_initializer="zeros", name=f"{name}_2_bn")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def resnet(num_classes: int, image_size: int, blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 32,
           dropout: float = 0.0) -> keras.Model:
    """A ResNet-18-style network of basic blocks; `width` scales every stage (64 gives ResNet-18)."""
    inputs, x = _pixels(image_size)
    x = _conv_bn_relu(x, width, stride=2 if image_size >= 128 else 1, name="stem")
    for stage, count in enumerate(blocks):
        for block in range(count):
            stride = 2 if block == 0 and stage > 0 else 1
            x = _basic_block(x, width * 2**stage, stride, name=f"stage{stage}_block{block}")
    return keras.Model(inputs, _logits(x, num_classes, dropout), name="resnet")


def application(name: str, num_classes: int, image_size: int, imagenet: bool = False) -> keras.Model:
    """A keras.applications backbone with a new head; `imagenet`: the backbone's ImageNet weights (a download)."""
    constructor, input_layer = APPLICATIONS[name]
    backbone = constructor(include_top=False, weights="imagenet" if imagenet else None,
                           input_shape=(image_size, image_size, 3))
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = input_layer()(inputs)
    return keras.Model(inputs, _logits(backbone(x), num_classes, dropout=0.2), name=name)


BUILDERS: dict[str, Callable[..., keras.Model]] = {"small_cnn": small_cnn, "resnet": resnet}


# Models of ImageNet scale (millions of parameters): they get the strong augmentation defaults.
LARGE = frozenset(APPLICATIONS) - {"mobilenet_v3_small"}


def build_classifier(name: str, num_classes: int, image_size: int, imagenet: bool = False) -> keras.Model:
    """Builds the classifier `name` (see `names()`); `imagenet` (keras.applications models only) starts the
    backbone from its ImageNet weights."""
    if name in APPLICATIONS:
        return application(name, num_classes, image_size, imagenet)
    if name not in BUILDERS:
        raise ValueError(f"--model={name} is not a classifier; choose one of {', '.join(names())}")
    if imagenet:
        raise ValueError(f"--init_checkpoint=imagenet needs a keras.applications model: one of "
                         f"{', '.join(sorted(APPLICATIONS))}, not --model={name}")
    return BUILDERS[name](num_classes, image_size)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers with weights below the head (every one but `logits`): what --freeze_epochs freezes."""
    return [layer for layer in model.layers if layer.weights and layer.name != "logits"]


def names() -> list[str]:
    """All classifier names accepted by `build_classifier`."""
    return sorted(BUILDERS) + sorted(APPLICATIONS)
