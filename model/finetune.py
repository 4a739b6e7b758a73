"""Classifier heads on frozen embeddings, and optional fine-tuning of the encoder's top.

Active learning retrains a small head after every batch of labels, so it must take seconds: a
logistic-regression (or one-hidden-layer) head on L2-normalised embeddings, trained full-batch
with class weights that balance a rare positive class (dual AGN are ~1e-4 of galaxies).
``finetune_encoder`` optionally unfreezes the encoder's last stage and trains it with the head
on labelled images (slower; run in a background process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="ssald")
class ClassifierHead(keras.Model):
    """Linear (``hidden=0``) or one-hidden-layer softmax head on normalised embeddings.

    Parameters
    ----------
    input_dim : int
        Embedding size.
    classes : sequence of str
        Class names, in output order.
    hidden : int
        Hidden units (0 for a linear head).
    dropout : float
        Dropout before the output layer.
    l2 : float
        L2 penalty on the kernels.
    """

    def __init__(self, input_dim: int, classes: Sequence[str], hidden: int = 0,
                 dropout: float = 0.0, l2: float = 1e-4, **kwargs: Any):
        if input_dim < 1:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"need at least two distinct classes, got {list(classes)}")
        if hidden < 0 or not 0 <= dropout < 1 or l2 < 0:
            raise ValueError("hidden must be >= 0, dropout in [0, 1), l2 >= 0")
        inputs = keras.Input((input_dim,), name="embedding")
        x = keras.layers.UnitNormalization(name="l2_normalise")(inputs)
        reg = keras.regularizers.L2(l2) if l2 else None
        if hidden:
            x = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=reg,
                                   name="hidden")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(len(classes), activation="softmax", kernel_regularizer=reg,
                                     name="probabilities")(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.input_dim = int(input_dim)
        self.classes = [str(c) for c in classes]
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.l2 = float(l2)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"input_dim": self.input_dim, "classes": self.classes, "hidden": self.hidden,
                "dropout": self.dropout, "l2": self.l2, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClassifierHead:
        """Rebuild from :meth:`get_config`."""
        return cls(**config)

    def predict_proba(self, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Class probabilities (N, classes)."""
        return np.asarray(self.predict(np.asarray(embeddings, np.float32), batch_size=batch_size,
                                       verbose=0))


def balanced_class_weight(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights ``N / (n_classes * count)``: each class weighs the same in the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    counts[counts == 0] = 1.0
    w = len(y) / (n_classes * counts)
    return {i: float(w[i]) for i in range(n_classes)}


def train_head(
    embeddings: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    classes: Sequence[str] | None = None,
    hidden: int = 0,
    epochs: int = 200,
    learning_rate: float = 0.05,
    l2: float = 1e-4,
    seed: int = 0,
) -> ClassifierHead:
    """Fit a head on frozen embeddings, full batch, class-balanced; takes seconds.

    Raises
    ------
    ValueError
        Mismatched lengths, fewer than two classes present, or labels outside ``classes``.
    """
    z = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray([str(v) for v in labels])
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"need (N, d) embeddings and N labels, got {z.shape} and {len(labels)}")
    classes = [str(c) for c in (classes if classes is not None else sorted(set(labels)))]
    unknown = set(labels) - set(classes)
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {sorted(unknown)}")
    present = set(labels)
    if len(present) < 2:
        raise ValueError(f"need labels of at least two classes, got only {sorted(present)}")
    y = np.array([classes.index(v) for v in labels])
    keras.utils.set_random_seed(seed)
    head = ClassifierHead(z.shape[1], classes, hidden=hidden, l2=l2)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss="sparse_categorical_crossentropy")
    head.fit(z, y, batch_size=len(z), epochs=epochs, verbose=0,
             class_weight=balanced_class_weight(y, len(classes)))
    return head


def finetune_encoder(
    encoder: keras.Model,
    images: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    classes: Sequence[str] | None = None,
    top_layers: int = 10,
    epochs: int = 5,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
) -> tuple[keras.Model, ClassifierHead]:
    """Fine-tune the encoder's last ``top_layers`` weight layers together with a linear head.

    The other layers stay frozen and every BatchNorm layer runs in inference mode (its moving
    statistics are kept), so a few hundred labels cannot wreck the self-supervised
    representation. Returns the encoder (modified in place)
    and the head.
    """
    labels = np.asarray([str(v) for v in labels])
    classes = [str(c) for c in (classes if classes is not None else sorted(set(labels)))]
    y = np.array([classes.index(v) for v in labels])
    weighted = [layer for layer in encoder.layers if layer.weights]
    for layer in weighted:
        layer.trainable = False
    for layer in weighted[-top_layers:]:
        layer.trainable = True  # BatchNorm too: its scale/offset learn, its statistics stay
    z0 = encoder.predict(images, batch_size=256, verbose=0)
    head = train_head(z0, labels, classes)
    inputs = keras.Input(encoder.input_shape[1:])
    outputs = head(encoder(inputs, training=False))
    joint = keras.Model(inputs, outputs)
    joint.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy")
    joint.fit(images, y, batch_size=batch_size, epochs=epochs, verbose=0,
              class_weight=balanced_class_weight(y, len(classes)))
    return encoder, head


# --------------------------------------------------------------------------------------------
# The background fine-tuning process: python -m model.finetune --data train.npz --out DIR
# --------------------------------------------------------------------------------------------

CARD_FORMAT = "ssald-head-card"


def _load_pictures(files: Sequence[str], scaling: dict[str, Any], size: int) -> np.ndarray:
    """Decode PNG/JPEG files, centre-crop to a square, scale and resize as the encoder's data.

    The same steps as ``ssald_desktop.core.embeddings.prepare_images`` (model must not import
    the desktop package): the card's pixel scaling, then an antialiased bilinear resize.
    """
    import tensorflow as tf
    from PIL import Image

    from model.data import apply_scaling

    out = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"), np.float32)
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = np.asarray(apply_scaling(a, scaling), np.float32)
        if x.shape[0] != size:
            x = tf.image.resize(x[None], (size, size), antialias=True).numpy()[0]
        out.append(x)
    return np.stack(out).astype(np.float32)


def run_finetune(data: str, out: str, mode: str = "head", encoder: str | None = None,
                 epochs: int | None = None, hidden: int = 0, top_layers: int = 10,
                 seed: int = 0) -> dict[str, Any]:
    """Fit a head (and optionally the encoder's top) on labelled embeddings; write the outputs.

    Parameters
    ----------
    data : str
        ``.npz`` with ``ids``, ``vectors`` (N, d), ``labels`` (N; ``positive``/``negative``),
        ``original`` (the label store's labels), ``sources`` (image files, encoder mode) and
        ``meta`` (JSON: encoder id, positive labels).
    out : str
        Output folder: ``head.keras``, ``head.card.json`` and, in encoder mode, the exported
        ``encoder.keras`` with its model card (``reembed`` is then true in the head card: the
        pool must be encoded again and its index rebuilt before the head applies).
    mode : {"head", "encoder"}
        Head only (default) or the encoder's top ``top_layers`` weight layers too.
    encoder : str, optional
        The exported encoder (encoder mode).
    epochs, hidden, top_layers, seed
        Training settings (epochs default: 200 for the head, 5 for the encoder).

    Returns
    -------
    dict
        The card written to ``head.card.json``.
    """
    import hashlib
    import json
    import time
    from pathlib import Path

    t0 = time.time()
    d = np.load(data, allow_pickle=False)
    meta = json.loads(str(d["meta"]))
    vectors = np.asarray(d["vectors"], np.float32)
    labels = np.asarray(d["labels"]).astype(str)
    classes = ["positive", "negative"]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    new_encoder_id = None
    if mode == "head":
        head = train_head(vectors, labels, classes, hidden=hidden, epochs=epochs or 200,
                          seed=seed)
    elif mode == "encoder":
        from model.export import load_encoder

        if not encoder:
            raise ValueError("encoder mode needs --encoder")
        enc, card = load_encoder(encoder)
        size = int(card.get("architecture", {}).get("input_size")
                   or card["input"]["shape"][0])
        images = _load_pictures([str(s) for s in d["sources"]], card["input"]["scaling"], size)
        keras.utils.set_random_seed(seed)
        enc, head = finetune_encoder(enc, images, labels, classes, top_layers=top_layers,
                                     epochs=epochs or 5)
        from model.export import export_encoder, file_sha256

        export_encoder(enc, outdir / "encoder.keras", normspec=card.get("normspec"),
                       scaling=card["input"]["scaling"], data=card.get("data"),
                       config={"finetune": {"parent_encoder_sha256": card.get("encoder_sha256"),
                                            "top_layers": top_layers, "epochs": epochs or 5,
                                            "labels": int(len(labels))}},
                       notes=f"fine-tuned from encoder {str(card.get('encoder_sha256'))[:12]} "
                             f"on {len(labels)} labels (top {top_layers} weight layers)")
        new_encoder_id = file_sha256(outdir / "encoder.keras")
    else:
        raise ValueError(f"mode must be 'head' or 'encoder', got {mode!r}")
    head.save(outdir / "head.keras")
    digest = hashlib.sha256((outdir / "head.keras").read_bytes()).hexdigest()
    original = np.asarray(d["original"]).astype(str)
    card_out = {
        "format": CARD_FORMAT, "version": f"head-{digest[:12]}",
        "head_sha256": digest, "head_file": "head.keras", "mode": mode,
        "encoder_file": "encoder.keras" if mode == "encoder" else None,
        "encoder_id": new_encoder_id or meta.get("encoder_id"),
        "parent_encoder_id": meta.get("encoder_id") if new_encoder_id else None,
        "reembed": bool(new_encoder_id), "classes": classes,
        "positive_labels": meta.get("positive", []),
        "counts": {c: int((labels == c).sum()) for c in classes},
        "label_counts": {str(k): int(v) for k, v in zip(*np.unique(original, return_counts=True),
                                                         strict=True)},
        "n_labels": int(len(labels)), "embedding_dim": int(vectors.shape[1]),
        "hidden": hidden, "epochs": epochs or (200 if mode == "head" else 5),
        "top_layers": top_layers if mode == "encoder" else 0, "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - t0, 2),
    }
    tmp = outdir / "head.card.json.tmp"
    tmp.write_text(json.dumps(card_out, indent=2) + "\n")
    tmp.replace(outdir / "head.card.json")  # the card appears last: its presence means done
    return card_out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model.finetune``: run :func:`run_finetune` and print its card as JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m model.finetune",
                                description="Fine-tune a classifier head (and optionally the "
                                            "encoder's top) on labelled embeddings.")
    p.add_argument("--data", required=True, help=".npz written by ssald_desktop.core.active")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=["head", "encoder"], default="head")
    p.add_argument("--encoder", help="exported encoder (encoder mode)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--top-layers", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        card = run_finetune(a.data, a.out, a.mode, a.encoder, a.epochs, a.hidden, a.top_layers,
                            a.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"model.finetune: error: {exc}")
        return 2
    print(json.dumps(card))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
