"""Segmentation models: uint8 images in, float32 per-pixel logits [b, s, s, classes] out.

- `unet`, `unet_bilinear`: this project's U-Net (encoder-decoder with skip connections), upsampling by
  transposed convolution or by bilinear resize + convolution. Measured at 64 px, batch 64, on 2 CPU cores:
  transposed 404 img/s, bilinear 201 img/s (same widths), hence the default.
- `deeplabv3plus`: keras-cv's DeepLabV3+ on a ResNet50V2 backbone built without weights (earlier weights by
  `--init_checkpoint`).
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def unet(num_classes: int, image_size: int, width: int = 16, depth: int = 3, upsampling: str = "transpose",
         stem_stride: int = 2) -> keras.Model:
    """U-Net: a stem (stride `stem_stride`), `depth` downsamplings with channels doubling from `width`, a
    decoder back up with skip connections, and a last upsampling to full size that rejoins a full-size
    feature map of the image. image_size must divide by stem_stride * 2**depth."""
    if image_size % (stem_stride * 2 ** depth):
        raise ValueError(f"--image_size={image_size} must be a multiple of {stem_stride * 2 ** depth} for the U-Net")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    image = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    full = _conv_bn_relu(image, width // 2, "full")  # full-size detail for the last stage
    x = layers.Conv2D(width, 3, strides=stem_stride, padding="same", use_bias=False, name="stem_conv")(image)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    skips = []
    for level in range(depth):
        filters = width * 2 ** level
        x = _conv_bn_relu(_conv_bn_relu(x, filters, f"down{level}a"), filters, f"down{level}b")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _conv_bn_relu(_conv_bn_relu(x, width * 2 ** depth, "bottom_a"), width * 2 ** depth, "bottom_b")
    for level in reversed(range(depth)):
        filters = width * 2 ** level
        x = _upsample(x, filters, 2, upsampling, f"up{level}")
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_bn_relu(_conv_bn_relu(x, filters, f"up{level}a"), filters, f"up{level}b")
    if stem_stride > 1:
        x = _upsample(x, width // 2, stem_stride, upsampling, "up_full")
        x = _conv_bn_relu(layers.Concatenate(name="up_full_skip")([x, full]), width // 2, "up_full_a")
    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"unet_{upsampling}")


def _upsample(x, filters: int, factor: int, upsampling: str, name: str):
    if upsampling == "transpose":
        return layers.Conv2DTranspose(filters, factor, strides=factor, name=f"{name}_transpose")(x)
    x = layers.UpSampling2D(factor, interpolation="bilinear", name=f"{name}_resize")(x)
    return _conv_bn_relu(x, filters, f"{name}_reduce")


def deeplabv3plus(num_classes: int, image_size: int) -> keras.Model:
    """keras-cv DeepLabV3+ on a ResNet50V2 backbone without pretrained weights."""
    import keras_cv

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    # The ResNet50V2 architecture from its constructor: the ResNet50V2Backbone alias fetches a preset online.
    backbone = keras_cv.models.ResNetV2Backbone(
        stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3], stackwise_strides=[1, 2, 2, 2],
        include_rescaling=False, input_shape=(image_size, image_size, 3))
    head = keras.Sequential([  # keras-cv's default head, without its softmax: the loss takes logits
        layers.Conv2D(256, 3, padding="same", use_bias=False, name="head_conv"),
        layers.BatchNormalization(name="head_bn"), layers.ReLU(name="head_relu"),
        layers.UpSampling2D(4, interpolation="bilinear", name="head_resize"),
        layers.Conv2D(num_classes, 1, use_bias=False, dtype="float32", name="head_logits")], name="segmentation_head")
    model = keras_cv.models.DeepLabV3Plus(backbone=backbone, num_classes=num_classes, segmentation_head=head)
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    logits = layers.Activation("linear", dtype="float32", name="logits")(model(x))
    return keras.Model(inputs, logits, name="deeplabv3plus")


BUILDERS: dict[str, Callable[[int, int], keras.Model]] = {
    "unet": lambda classes, size: unet(classes, size, upsampling="transpose"),
    "unet_bilinear": lambda classes, size: unet(classes, size, upsampling="bilinear"),
    "deeplabv3plus": deeplabv3plus,
}
LARGE = frozenset({"deeplabv3plus"})


def build_segmenter(name: str, num_classes: int, image_size: int) -> keras.Model:
    """Builds the segmentation model `name` (one of BUILDERS)."""
    if name not in BUILDERS:
        raise ValueError(f"--model={name} is not a segmentation model; choose one of {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](num_classes, image_size)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The encoder, what --freeze_epochs freezes: DeepLabV3+'s ResNet50V2, or the U-Net's layers before its
    decoder (the `up*` layers) and logits."""
    inner = [layer for layer in model.layers if hasattr(layer, "backbone")]
    if inner:
        return [inner[0].backbone]
    return [layer for layer in model.layers if layer.weights and not layer.name.startswith(("up", "logits"))]
