"""Every classifier builds from scratch, takes uint8 pixels and returns float32 logits, in any precision."""

import numpy as np
import pytest
import keras

from models import classification


@pytest.fixture
def policy():
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", classification.names())
def test_classifier_forward_pass(name):
    model = classification.build_classifier(name, num_classes=7, image_size=32)
    logits = model(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert tuple(logits.shape) == (2, 7)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_variables_and_outputs(policy, precision):
    policy(precision)
    model = classification.build_classifier("small_cnn", num_classes=3, image_size=32)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in model.trainable_variables)
    assert keras.backend.standardize_dtype(model(np.zeros((1, 32, 32, 3), np.uint8)).dtype) == "float32"
    assert model.get_layer("stem_conv").compute_dtype == precision.split("_")[1]


def test_unknown_model_names_the_flag():
    with pytest.raises(ValueError, match="--model=vgg_nope"):
        classification.build_classifier("vgg_nope", 3, 32)
