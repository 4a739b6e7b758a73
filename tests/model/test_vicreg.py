from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.encoder import Encoder  # noqa: E402
from model.vicreg import (  # noqa: E402
    METRIC_NAMES,
    VICReg,
    build_projector,
    covariance_loss,
    embedding_std,
    invariance_loss,
    rankme,
    variance_loss,
    vicreg_loss,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHAPES = [(2, 1), (4, 3), (16, 8), (33, 5), (64, 32)]


# -- NumPy references, written from the paper and its reference code (float64) --------------


def np_invariance(z1, z2):
    return np.mean((z1 - z2) ** 2)


def np_variance(z, eps=1e-4):
    std = np.sqrt(np.var(z, axis=0, ddof=1) + eps)
    return np.mean(np.maximum(0.0, 1.0 - std))


def np_covariance(z):
    n, d = z.shape
    c = np.cov(z, rowvar=False, ddof=1).reshape(d, d)
    off = c - np.diag(np.diag(c))
    return np.sum(off**2) / d


def np_rankme(h, eps=1e-7):
    s = np.linalg.svd(h, compute_uv=False)
    p = s / (s.sum() + eps) + eps
    return np.exp(-np.sum(p * np.log(p)))


def random_pair(shape, seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 3.0, size=shape[1])
    z1 = (rng.standard_normal(shape) * scale + rng.standard_normal(shape[1])).astype(np.float32)
    z2 = (z1 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    return z1, z2


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(float(a), float(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
def test_terms_match_numpy(shape):
    z1, z2 = random_pair(shape, seed=shape[0] * 100 + shape[1])
    a, b = z1.astype(np.float64), z2.astype(np.float64)
    close(invariance_loss(z1, z2), np_invariance(a, b))
    close(variance_loss(z1), np_variance(a))
    close(variance_loss(z1, eps=0.5), np_variance(a, eps=0.5))
    close(covariance_loss(z1), np_covariance(a))
    close(embedding_std(z1), np.mean(np.std(a, axis=0, ddof=1)))


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.5, 10.0, 0.0)])
def test_total_matches_numpy(shape, coeffs):
    z1, z2 = random_pair(shape, seed=7 + shape[0])
    a, b = z1.astype(np.float64), z2.astype(np.float64)
    terms = vicreg_loss(z1, z2, *coeffs)
    inv = np_invariance(a, b)
    var = (np_variance(a) + np_variance(b)) / 2
    cov = np_covariance(a) + np_covariance(b)
    close(terms["invariance"], inv)
    close(terms["variance"], var)
    close(terms["covariance"], cov)
    close(terms["loss"], coeffs[0] * inv + coeffs[1] * var + coeffs[2] * cov)


def test_default_coefficients_are_the_papers():
    z1, z2 = random_pair((32, 8), seed=1)
    t = vicreg_loss(z1, z2)
    close(t["loss"], 25 * t["invariance"] + 25 * t["variance"] + t["covariance"])


def test_known_cases():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((64, 16)).astype(np.float32)
    assert float(invariance_loss(z, z)) == 0.0
    assert float(variance_loss(10.0 * z)) == 0.0  # std >> 1: the hinge is inactive
    close(variance_loss(np.ones((8, 4), np.float32)), 1.0 - np.sqrt(1e-4))  # collapsed
    # Exactly decorrelated with unit variance: orthonormal centred columns times sqrt(N - 1).
    q, _ = np.linalg.qr(z - z.mean(axis=0))
    white = (q * np.sqrt(63.0)).astype(np.float32)
    assert float(covariance_loss(white)) < 1e-8
    assert float(variance_loss(white)) == 0.0
    # Duplicated dimensions are maximally correlated.
    dup = np.repeat(white[:, :1], 16, axis=1)
    close(covariance_loss(dup), 16 * 15 / 16, rtol=1e-3)


def test_rankme():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((64, 16)).astype(np.float32)
    close(rankme(h), np_rankme(h.astype(np.float64)), rtol=1e-4)
    assert 12 < float(rankme(h)) <= 16
    rank1 = np.outer(rng.standard_normal(64), rng.standard_normal(16)).astype(np.float32)
    assert float(rankme(rank1)) < 1.01


def test_projector():
    proj = build_projector(16, [32, 32, 8])
    assert proj.output_shape == (None, 8)
    assert [layer.name for layer in proj.layers if "bn" in layer.name] == ["bn1", "bn2"]
    assert build_projector(4, [6]).output_shape == (None, 6)
    with pytest.raises(ValueError, match="dims must be positive"):
        build_projector(16, [])
    with pytest.raises(ValueError, match="input_dim must be"):
        build_projector(0, [8])


def tiny_model(augmenter=None, **kwargs):
    keras.utils.set_random_seed(0)
    enc = Encoder(bands=3, input_size=16, width=8, depths=[1, 1], embedding_dim=16)
    model = VICReg(enc, build_projector(16, [32, 32]), augmenter=augmenter, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    return model


def noisy(x):
    return x + tf.random.normal(tf.shape(x), stddev=0.05)


def test_constructor_validation():
    enc = Encoder(bands=3, input_size=16, width=8, depths=[1, 1], embedding_dim=16)
    with pytest.raises(ValueError, match="expects 8-d inputs but the encoder outputs 16-d"):
        VICReg(enc, build_projector(8, [8]))
    with pytest.raises(ValueError, match="std_coeff must be >= 0"):
        VICReg(enc, build_projector(16, [8]), std_coeff=-1)
    with pytest.raises(ValueError, match="augmenter must be callable"):
        VICReg(enc, build_projector(16, [8]), augmenter=3)


def test_fit_pairs_and_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((24, 16, 16, 3), dtype=np.float32)
    x2 = np.clip(x + 0.05 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)

    model = tiny_model(augmenter=noisy)
    before = [w.copy() for w in model.get_weights()]
    pairs = tf.data.Dataset.from_tensor_slices((x, x2)).batch(8)
    hist = model.fit(pairs, epochs=1, steps_per_epoch=2, verbose=0)
    assert set(hist.history) == set(METRIC_NAMES)
    assert all(np.isfinite(v[-1]) for v in hist.history.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))

    images = tf.data.Dataset.from_tensor_slices(x).batch(8)
    hist = model.fit(images, epochs=1, steps_per_epoch=2, verbose=0)
    assert set(hist.history) == set(METRIC_NAMES)
    logs = model.evaluate(pairs, verbose=0, return_dict=True)
    assert set(logs) == set(METRIC_NAMES) and all(np.isfinite(list(logs.values())))

    # The whole model saves and loads (augmenter not saved: a plain function).
    path = tmp_path / "vicreg.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, VICReg) and loaded.augmenter is None
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_images_without_augmenter_is_a_clear_error():
    model = tiny_model()
    x = np.zeros((8, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="no augmenter"):
        model.fit(tf.data.Dataset.from_tensor_slices(x).batch(8), epochs=1, verbose=0)


def test_two_replicas_equal_one_device_on_the_global_batch():
    """Loss and gradients on 2 logical CPUs with all_gather equal one device; without, not."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(HERE / "_two_replica.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["strategy"]["num_replicas"] == 2
    # Float32 round-off only: sums over replicas are ordered differently (measured ~2e-5
    # against gradients up to ~3; without the gather the difference is ~0.7).
    tol = 1e-4 * max(1.0, out["grad_scale"])

    gathered = out["gather"]
    assert gathered["loss_diff"] <= 1e-5 * max(1.0, abs(out["default"]["loss"]))
    assert max(gathered["metric_diff"].values()) <= 1e-5
    assert gathered["grad_diff"] <= tol, gathered
    assert gathered["weight_diff"] <= 1e-5, gathered

    naive = out["no_gather"]
    assert naive["loss_diff"] > 1e-2, naive
    assert naive["grad_diff"] > 100 * tol, naive
