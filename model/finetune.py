"""Classifier heads on frozen embeddings, and optional fine-tuning of the encoder's top.

Active learning retrains a small head after every batch of labels, so it must take seconds: a
logistic-regression (or one-hidden-layer) head on L2-normalised embeddings, trained full-batch
with class weights that balance a rare positive class (dual AGN are ~1e-4 of galaxies).
``finetune_encoder`` optionally unfreezes the encoder's last stage and trains it with the head
on labelled images (slower; run in a background process).

The background process (``python -m model.finetune``, :func:`run_finetune`) takes what the
desktop app exports (``ssald_desktop.core.active.launch_finetune``): the labelled objects'
stored vectors and labels (``train.npz``) and, to fine-tune the encoder, their raw pixels
(``pixels.h5``, read back from the store's sources, HDF5 shards or image files, by the same
readers that encoded the store; :func:`read_pixels`). The pixels are prepared here exactly as
the encoder card says (:func:`prepare_pixels`), and checked to give back the stored vectors
(:func:`check_reproduces`) before any training, so the fine-tuned encoder starts from the
pixels the store was embedded from.
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
    # Full-batch gradient steps as one pass over a repeated one-element dataset: the same
    # ``epochs`` updates as ``fit(epochs=epochs)``, without the per-epoch overhead (seconds).
    import tensorflow as tf

    cw = balanced_class_weight(y, len(classes))
    w = np.array([cw[int(k)] for k in y], np.float32)
    data = tf.data.Dataset.from_tensors((z, y.astype(np.int32), w)).repeat(epochs)
    head.fit(data, epochs=1, verbose=0, shuffle=False)
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
    initial_embeddings: np.ndarray | None = None,
) -> tuple[keras.Model, ClassifierHead]:
    """Fine-tune the encoder's last ``top_layers`` weight layers together with a linear head.

    The other layers stay frozen and every BatchNorm layer runs in inference mode (its moving
    statistics are kept), so a few hundred labels cannot wreck the self-supervised
    representation. The head starts from a fit on the frozen embeddings (linear probing first,
    then fine-tuning, as Kumar et al. 2022 recommend so that a random head does not distort
    the features). Returns the encoder (modified in place) and the head.

    Parameters
    ----------
    encoder : keras.Model
        The exported encoder (trained in place).
    images : ndarray
        Prepared images ``(N, S, S, C)`` (:func:`prepare_pixels`).
    labels : sequence of str
        One class name per image.
    classes : sequence of str, optional
        Class names in the head's output order (default: sorted labels).
    top_layers : int
        How many of the last weight layers train (the rest stay frozen).
    epochs, learning_rate, batch_size
        Settings of the joint fit (Adam, class-balanced cross-entropy).
    initial_embeddings : ndarray, optional
        The encoder's embeddings of ``images`` before fine-tuning (computed if not given).

    Raises
    ------
    ValueError
        ``top_layers`` below 1 or more than the encoder's weight layers.
    """
    labels = np.asarray([str(v) for v in labels])
    classes = [str(c) for c in (classes if classes is not None else sorted(set(labels)))]
    y = np.array([classes.index(v) for v in labels])
    weighted = [layer for layer in encoder.layers if layer.weights]
    if not 1 <= top_layers <= len(weighted):
        raise ValueError(f"top_layers must be between 1 and {len(weighted)} (the encoder's "
                         f"weight layers), got {top_layers}")
    for layer in weighted:
        layer.trainable = False
    for layer in weighted[-top_layers:]:
        layer.trainable = True  # BatchNorm too: its scale/offset learn, its statistics stay
    z0 = (encoder.predict(images, batch_size=256, verbose=0) if initial_embeddings is None
          else np.asarray(initial_embeddings, np.float32))
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
PIXELS_FORMAT = "ssald-finetune-pixels"
#: Cosine below which an object's re-encoded pixels count as not reproducing its stored vector.
REPRODUCE_COSINE = 0.999


def prepare_pixels(raw: Sequence[np.ndarray], scaling: dict[str, Any],
                   input_size: int) -> np.ndarray:
    """Scale and resize raw images exactly as the encoder's data were prepared.

    :func:`model.pixels.prepare_raw_images`, the implementation the desktop's
    ``prepare_images`` uses too.
    """
    from model.pixels import prepare_raw_images

    return prepare_raw_images(raw, scaling, input_size)


def read_pixels(path: str | Any) -> tuple[list[str], list[np.ndarray]]:
    """Read the labelled objects' raw pixels exported by the desktop app (``pixels.h5``).

    Layout (format ``ssald-finetune-pixels``, written by
    ``ssald_desktop.core.active.export_pixels`` with the readers the store was encoded
    from): ``ids`` (N,) strings; one dataset ``shapes/<k>`` ``(n_k, H, W, C)`` per distinct
    raw shape; ``which`` and ``slot`` (N,) giving object ``i`` as ``shapes/<which[i]>[slot[i]]``.

    Returns
    -------
    ids : list of str
    images : list of ndarray
        Raw ``(H, W, C)`` pixels, in the order of ``ids``.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, or one that is not such an export (the message names it).
    """
    from pathlib import Path

    import h5py

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: the labelled images exported for fine-tuning are missing")
    with h5py.File(p, "r") as h:
        if h.attrs.get("format") != PIXELS_FORMAT:
            raise ValueError(f"{p}: not an SSALD fine-tuning pixel export")
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in h["ids"][...]]
        which = np.asarray(h["which"][...], np.int64)
        slot = np.asarray(h["slot"][...], np.int64)
        blocks = [np.asarray(h["shapes"][str(k)][...]) for k in range(len(h["shapes"]))]
    return ids, [blocks[w][s] for w, s in zip(which, slot, strict=True)]


def check_reproduces(z: np.ndarray, stored: np.ndarray, ids: Sequence[str],
                     where: str, min_cosine: float = REPRODUCE_COSINE) -> float:
    """Check that the encoder on the exported pixels gives back the stored vectors.

    The fine-tuned encoder must start from the pixels the store was embedded from; an image
    that changed on disk, or preprocessing that differs, shows as a lower cosine.

    Returns
    -------
    float
        The smallest cosine.

    Raises
    ------
    ValueError
        An object below ``min_cosine`` (named, with its cosine).
    """
    a = np.asarray(z, np.float64)
    b = np.asarray(stored, np.float64)
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1)
                                          * np.linalg.norm(b, axis=1), 1e-30)
    worst = int(np.argmin(cos)) if len(cos) else -1
    if worst >= 0 and cos[worst] < min_cosine:
        raise ValueError(
            f"{where}: the pixels of object {ids[worst]!r} do not give back its stored "
            f"embedding (cosine {cos[worst]:.4f}); its image changed since the store was "
            "built, or was prepared differently: re-embed the store before fine-tuning")
    return float(cos.min()) if len(cos) else 1.0


def score_pool(head: ClassifierHead, pool: dict[str, Any], out: Any,
               batch_size: int = 65536) -> str:
    """Write the head's positive probability for every stored vector of the pool.

    ``pool`` describes the embedding store's raw vector file (``vectors``, ``count``,
    ``dim``: little-endian float32, row-major); it is read through a memory map in batches and
    the probabilities (float32, one per store row) go to ``out`` (``.npy``). Returns its name.
    """
    from pathlib import Path

    n, d = int(pool["count"]), int(pool["dim"])
    vec = np.memmap(pool["vectors"], dtype="<f4", mode="r", shape=(n, d))
    p = np.empty(n, np.float32)
    for s in range(0, n, batch_size):
        p[s:s + batch_size] = head.predict_proba(np.asarray(vec[s:s + batch_size]))[:, 0]
    out = Path(out)
    tmp = out.with_name(out.stem + ".tmp.npy")
    np.save(tmp, p)
    tmp.replace(out)
    return out.name


def run_finetune(data: str, out: str, mode: str = "head", encoder: str | None = None,
                 epochs: int | None = None, hidden: int = 0, top_layers: int = 10,
                 seed: int = 0, pixels: str | None = None) -> dict[str, Any]:
    """Fit a head (and optionally the encoder's top) on labelled embeddings; write the outputs.

    Parameters
    ----------
    data : str
        ``.npz`` with ``ids``, ``vectors`` (N, d; the store's vectors), ``labels`` (N;
        ``positive``/``negative``), ``original`` (the label store's labels), ``sources`` (for
        the record) and ``meta`` (JSON: encoder id, positive labels, ``pool`` (the store's
        vector file, to score it in head mode) and ``pixels`` (encoder mode)).
    out : str
        Output folder: ``head.keras``, ``head.card.json``; in head mode ``pool_scores.npy``
        (the head's P(positive) of every stored object, when ``meta`` describes the pool); in
        encoder mode the exported ``encoder.keras`` with its model card (``reembed`` is then
        true in the head card: the pool must be encoded again and its index rebuilt before the
        head applies).
    mode : {"head", "encoder"}
        Head only (default) or the encoder's top ``top_layers`` weight layers too.
    encoder : str, optional
        The exported encoder (encoder mode).
    epochs, hidden, top_layers, seed
        Training settings (epochs default: 200 for the head, 5 for the encoder).
    pixels : str, optional
        The labelled objects' raw pixels (:func:`read_pixels`; encoder mode); default the
        ``pixels`` file named in ``meta``, beside ``data``.

    Returns
    -------
    dict
        The card written to ``head.card.json``.

    Raises
    ------
    ValueError, FileNotFoundError
        A bad mode, a missing encoder or pixel file, pixels that are not the labelled objects
        or do not give back their stored vectors (:func:`check_reproduces`).
    """
    import hashlib
    import json
    import time
    from pathlib import Path

    t0 = time.time()
    d = np.load(data, allow_pickle=False)
    meta = json.loads(str(d["meta"]))
    ids = [str(i) for i in d["ids"]]
    vectors = np.asarray(d["vectors"], np.float32)
    labels = np.asarray(d["labels"]).astype(str)
    classes = ["positive", "negative"]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    new_encoder_id = None
    extra: dict[str, Any] = {}
    if mode == "head":
        head = train_head(vectors, labels, classes, hidden=hidden, epochs=epochs or 200,
                          seed=seed)
    elif mode == "encoder":
        from model.export import export_encoder, file_sha256, load_encoder

        if not encoder:
            raise ValueError("encoder mode needs --encoder")
        enc, card = load_encoder(encoder)
        size = int(card.get("architecture", {}).get("input_size")
                   or card["input"]["shape"][0])
        pix = Path(pixels) if pixels else Path(data).parent / str(meta.get("pixels",
                                                                           "pixels.h5"))
        pix_ids, raw = read_pixels(pix)
        if pix_ids != ids:
            raise ValueError(f"{pix}: its objects are not the labelled objects of {data}")
        images = prepare_pixels(raw, card["input"]["scaling"], size)
        del raw
        z0 = enc.predict(images, batch_size=256, verbose=0)
        if card.get("encoder_sha256") == meta.get("encoder_id"):
            extra["min_cosine_to_store"] = round(check_reproduces(z0, vectors, ids, str(pix)),
                                                 6)
        keras.utils.set_random_seed(seed)
        enc, head = finetune_encoder(enc, images, labels, classes, top_layers=top_layers,
                                     epochs=epochs or 5, initial_embeddings=z0)
        export_encoder(enc, outdir / "encoder.keras", normspec=card.get("normspec"),
                       scaling=card["input"]["scaling"], data=card.get("data"),
                       config={**card.get("training_config", {}),
                               "finetune": {"parent_encoder_sha256": card.get("encoder_sha256"),
                                            "top_layers": top_layers, "epochs": epochs or 5,
                                            "labels": int(len(labels)),
                                            "store_normspec": meta.get("normspec")}},
                       notes=f"fine-tuned from encoder {str(card.get('encoder_sha256'))[:12]} "
                             f"on {len(labels)} labels (top {top_layers} weight layers)")
        new_encoder_id = file_sha256(outdir / "encoder.keras")
    else:
        raise ValueError(f"mode must be 'head' or 'encoder', got {mode!r}")
    head.save(outdir / "head.keras")
    digest = hashlib.sha256((outdir / "head.keras").read_bytes()).hexdigest()
    pool = meta.get("pool")
    if mode == "head" and pool:  # the head's scores of the whole pool, once (no TF in the GUI)
        extra["pool_scores"] = score_pool(head, pool, outdir / "pool_scores.npy")
        extra["pool"] = {k: pool[k] for k in ("count", "dim", "rewrites", "encoder_id")
                         if k in pool}
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
        **extra,
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
    p.add_argument("--pixels", help="the labelled objects' pixels (encoder mode; default: the "
                                    "file named in the .npz, beside it)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--top-layers", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        card = run_finetune(a.data, a.out, a.mode, a.encoder, a.epochs, a.hidden, a.top_layers,
                            a.seed, a.pixels)
    except (OSError, ValueError, KeyError) as exc:
        print(f"model.finetune: error: {exc}")
        return 2
    print(json.dumps(card))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
