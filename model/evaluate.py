"""Linear-probe and kNN evaluation of an encoder on labelled images (``python -m model.evaluate``).

Used for the model card of the default encoder: on the labelled Galaxy Zoo 2 images (spiral vs
non_spiral), a stratified hold-out split; the features of the trained encoder are compared with
those of a randomly initialised encoder of the same shape and with raw pixels (32 x 32 x 3).

- Linear probe: standardised features, class-balanced logistic regression, balanced accuracy
  on the held-out part.
- kNN: cosine similarity, majority vote of the k = 20 nearest training images, balanced
  accuracy.

Images are resized whole to the encoder's input size (the largest crop the training
augmentation draws), with antialiasing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_labelled_images(
    folder: str | Path, labels_csv: str | Path, classes: Sequence[str] = ("spiral", "non_spiral")
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the labelled images (float32 in [0, 1], (N, H, W, 3)), their labels and ids."""
    from PIL import Image

    folder = Path(folder)
    ids, labels = [], []
    with open(labels_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] in classes:
                ids.append(row["galaxy_id"])
                labels.append(row["label"])
    if not ids:
        raise ValueError(f"{labels_csv}: no images labelled {list(classes)}")
    images = np.stack(
        [np.asarray(Image.open(folder / f"{i}.jpg").convert("RGB"), np.float32) / 255.0
         for i in ids]
    )
    return images, np.asarray(labels), ids


def encode(encoder: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Encoder features of images resized to its input size."""
    import tensorflow as tf

    size = int(encoder.input_shape[1])
    out = []
    for start in range(0, len(images), batch):
        x = tf.image.resize(images[start : start + batch], (size, size), antialias=True)
        out.append(np.asarray(encoder(x, training=False)))
    return np.concatenate(out)


def raw_pixels(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Raw-pixel features: the image resized to ``size`` and flattened."""
    import tensorflow as tf

    x = tf.image.resize(images, (size, size), antialias=True)
    return np.asarray(x).reshape(len(images), -1)


def probe(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of a linear probe and of a kNN vote on a stratified 70/30 split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from model.callbacks import knn_accuracy

    tr, te = train_test_split(np.arange(len(labels)), test_size=0.3, stratify=labels,
                              random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000,
                                                             class_weight="balanced"))
    clf.fit(features[tr], labels[tr])
    linear = balanced_accuracy_score(labels[te], clf.predict(features[te]))
    knn = knn_accuracy(features[tr], labels[tr], features[te], labels[te], k=20)
    return {"linear_probe_balanced_accuracy": float(linear),
            "knn20_balanced_accuracy": float(knn), "n_train": int(len(tr)),
            "n_test": int(len(te))}


def evaluate(encoder_path: str | Path, gz2: str | Path, seed: int = 0) -> dict[str, Any]:
    """Probe the trained encoder, a random encoder of the same shape, and raw pixels."""
    import keras

    from model.encoder import Encoder
    from model.export import load_encoder
    from model.vicreg import rankme

    gz2 = Path(gz2)
    images, labels, _ = load_labelled_images(gz2 / "images", gz2 / "labels.csv")
    trained, card = load_encoder(encoder_path)
    keras.utils.set_random_seed(seed)
    random_init = Encoder.from_config(trained.get_config())
    results: dict[str, Any] = {"data": str(gz2), "n_labelled": int(len(labels)),
                               "classes": {c: int((labels == c).sum()) for c in np.unique(labels)},
                               "split": f"stratified 70/30, seed {seed}"}
    for name, feats in (
        ("trained_encoder", encode(trained, images)),
        ("random_init_encoder", encode(random_init, images)),
        ("raw_pixels_32px", raw_pixels(images)),
    ):
        results[name] = probe(feats, labels, seed)
        if name != "raw_pixels_32px":
            results[name]["rankme"] = float(rankme(feats))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model.evaluate --encoder PATH --gz2 DIR [--json OUT]``."""
    p = argparse.ArgumentParser(prog="python -m model.evaluate")
    p.add_argument("--encoder", required=True)
    p.add_argument("--gz2", required=True, help="folder with images/ and labels.csv")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--update-card", action="store_true",
                   help="also record the figures under 'evaluation' in the encoder's model card")
    args = p.parse_args(argv)
    r = evaluate(args.encoder, args.gz2)
    if args.update_card:
        from model.export import card_path, load_card

        card = load_card(args.encoder)
        card["evaluation"] = r
        card_path(args.encoder).write_text(json.dumps(card, indent=2) + "\n")
    for name in ("trained_encoder", "random_init_encoder", "raw_pixels_32px"):
        m = r[name]
        print(f"{name:22s} linear probe {m['linear_probe_balanced_accuracy']:.3f}   "
              f"kNN-20 {m['knn20_balanced_accuracy']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
