from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model.config import ENCODER_PRESETS, Config, EncoderConfig  # noqa: E402
from model.encoder import Encoder, build_encoder, count_params  # noqa: E402

TINY = {"bands": 3, "input_size": 16, "width": 8, "depths": [1, 1], "embedding_dim": 16}


def preset(name: str, **overrides) -> EncoderConfig:
    return Config.from_dict({"encoder": {"preset": name, **overrides}}).encoder


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("small", 1.0e6, 3.0e6), ("resnet18", 10.5e6, 12e6), ("resnet50", 23e6, 25e6)],
)
def test_preset_parameter_counts(name, low, high):
    enc = build_encoder(preset(name))
    n = count_params(enc, trainable_only=True)
    assert low <= n <= high, f"{name}: {n} parameters"
    assert count_params(enc) >= n  # plus batch-norm moving statistics
    assert enc.output_shape == (None, ENCODER_PRESETS[name]["embedding_dim"])


def test_resnet50_has_no_extra_dense():
    enc = build_encoder(preset("resnet50"))
    names = {layer.name for layer in enc.layers}
    assert "embedding" not in names  # 4 * 8 * 64 = 2048 channels = embedding_dim
    assert "embedding" in {layer.name for layer in build_encoder(preset("small")).layers}


@pytest.mark.parametrize("bands", [3, 5])
def test_output_shape_small_preset(bands):
    enc = build_encoder(preset("small", bands=bands))
    x = np.random.default_rng(0).random((2, 64, 64, bands), dtype=np.float32)
    out = enc(x, training=False)
    assert tuple(out.shape) == (2, 128)
    assert str(out.dtype) in ("float32", "<dtype: 'float32'>")
    assert np.all(np.isfinite(np.asarray(out)))


def test_bottleneck_tiny_shape():
    enc = Encoder(**{**TINY, "bands": 5, "bottleneck": True, "embedding_dim": 64})
    x = np.zeros((3, 16, 16, 5), np.float32)
    assert tuple(enc(x).shape) == (3, 64)  # 4 * 8 * 2 = 64 channels: no Dense
    assert "embedding" not in {layer.name for layer in enc.layers}


def test_stem_keeps_resolution():
    enc = build_encoder(preset("small"))
    # stride 16 in all: a 64 px cutout ends in a 4x4 map, not 2x2 as with the ImageNet stem.
    assert enc.get_layer("stage4_block2_out").output.shape[1:3] == (4, 4)
    assert enc.get_layer("stem_relu1").output.shape[1:3] == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": 0}, "bands must be a positive integer"),
        ({"bands": 2.5}, "bands must be a positive integer"),
        ({"width": True}, "width must be a positive integer"),
        ({"embedding_dim": -1}, "embedding_dim must be a positive integer"),
        ({"depths": []}, "depths must be a non-empty list"),
        ({"depths": "22"}, "depths must be a non-empty list"),
        ({"depths": [1, 0]}, r"depths\[1\] must be a positive integer"),
        ({"input_size": 18}, "multiple of the total stride 4"),
        ({"input_size": 8, "depths": [1, 1, 1, 1]}, "multiple of the total stride 16"),
        ({"bottleneck": "yes"}, "bottleneck must be True or False"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Encoder(**{**TINY, **kwargs})


def test_get_config_and_build_encoder():
    cfg = EncoderConfig(bands=5, input_size=32, width=8, depths=[1, 2], embedding_dim=24)
    enc = build_encoder(cfg, name="enc5")
    conf = enc.get_config()
    assert conf == {
        "name": "enc5",
        "trainable": True,
        "bands": 5,
        "input_size": 32,
        "width": 8,
        "depths": [1, 2],
        "bottleneck": False,
        "embedding_dim": 24,
    }
    clone = Encoder.from_config(conf)
    assert count_params(clone) == count_params(enc)


def test_keras_round_trip_safe_mode(tmp_path):
    keras.utils.set_random_seed(3)
    enc = Encoder(**{**TINY, "bands": 5})
    # Move the batch-norm statistics and zero-initialised gammas off their defaults.
    enc.set_weights(
        [
            np.random.default_rng(i).uniform(0.5, 1.5, w.shape).astype(w.dtype)
            if w.ndim == 1
            else w
            for i, w in enumerate(enc.get_weights())
        ]
    )
    path = tmp_path / "encoder.keras"
    enc.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, Encoder)
    assert loaded.get_config() == enc.get_config()
    x = np.random.default_rng(0).random((4, 16, 16, 5), dtype=np.float32)
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=False)), np.asarray(enc(x, training=False))
    )


def test_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        enc = Encoder(**TINY)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = enc(np.zeros((2, 16, 16, 3), np.float32))
    assert "float32" in str(out.dtype)
    assert "bfloat16" in str(enc.get_layer("stem_conv1").compute_dtype)
