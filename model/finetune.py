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
