import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model.encoder import Encoder  # noqa: E402
from model.finetune import ClassifierHead, finetune_encoder, train_head  # noqa: E402


def _rare_class(n=2000, d=32, positives=20, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32)
    y = np.array(["not"] * n, dtype=object)
    y[:positives] = "dagn"
    z[:positives] += 2.5 * np.eye(d, dtype=np.float32)[0]  # positives sit along one direction
    return z, y


def test_head_finds_a_rare_class_thanks_to_balancing():
    z, y = _rare_class()
    head = train_head(z, y, classes=["dagn", "not"])
    p = head.predict_proba(z)[:, 0]
    recall = (p[:20] > 0.5).mean()
    false_rate = (p[20:] > 0.5).mean()
    assert recall >= 0.8 and false_rate < 0.2
    # the positives rank above almost all negatives
    assert np.mean(p[:20, None] > p[None, 20:]) > 0.95


def test_head_round_trip_safe_mode(tmp_path):
    z, y = _rare_class(n=200, positives=10)
    head = train_head(z, y, hidden=16, epochs=20)
    path = tmp_path / "head.keras"
    head.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(again, ClassifierHead) and again.classes == head.classes
    np.testing.assert_allclose(again.predict_proba(z), head.predict_proba(z), atol=1e-6)


def test_head_bad_input():
    z, y = _rare_class(n=50, positives=5)
    with pytest.raises(ValueError, match="two classes"):
        train_head(z, ["not"] * 50)
    with pytest.raises(ValueError, match="N labels"):
        train_head(z, y[:10])
    with pytest.raises(ValueError, match="not among the classes"):
        train_head(z, y, classes=["a", "b"])


def test_finetune_changes_only_the_top_of_the_encoder():
    keras.utils.set_random_seed(0)
    enc = Encoder(bands=3, input_size=32, width=8, depths=[1, 1], embedding_dim=16)
    rng = np.random.default_rng(0)
    x = rng.random((24, 32, 32, 3), dtype=np.float32)
    y = np.array(["a", "b"] * 12)
    before = [w.numpy().copy() for w in enc.weights]
    enc, head = finetune_encoder(enc, x, y, top_layers=4, epochs=2, batch_size=8)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, enc.weights, strict=True)]
    assert any(changed) and not all(changed)
    assert head.predict_proba(enc.predict(x, verbose=0)).shape == (24, 2)


def test_finetune_top_layers_must_be_some_but_not_more_than_exist():
    # top_layers=0 used to unfreeze every layer (weighted[-0:] is the whole list)
    enc = Encoder(bands=3, input_size=32, width=8, depths=[1, 1], embedding_dim=16)
    x = np.zeros((4, 32, 32, 3), np.float32)
    for bad in (0, 10_000):
        with pytest.raises(ValueError, match="top_layers must be between 1 and"):
            finetune_encoder(enc, x, ["a", "b"] * 2, top_layers=bad)


def test_read_pixels_refuses_other_files(tmp_path):
    from model.finetune import read_pixels

    with pytest.raises(FileNotFoundError, match="pixels.h5"):
        read_pixels(tmp_path / "pixels.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["x"] = [1]
    with pytest.raises(ValueError, match="other.h5: not an SSALD fine-tuning pixel export"):
        read_pixels(tmp_path / "other.h5")
