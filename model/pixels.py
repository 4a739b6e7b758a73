"""Raw cutout pixels to encoder input, shared by the desktop, fine-tuning and tests.

The one implementation of the preprocessing an exported encoder's card describes, used by
``ssald_desktop.core.embeddings.prepare_images`` (queries and store encoding in the desktop)
and :mod:`model.finetune` (the pixels a fine-tune trains on), so the two cannot drift apart.
TensorFlow is imported only when images are resized: the desktop imports this module at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def centre_square(arr: np.ndarray) -> np.ndarray:
    """Centre-crop ``(H, W, C)`` to a square of the shorter side (as the training loader)."""
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top:top + s, left:left + s]


def prepare_raw_images(raw: Sequence[np.ndarray], scaling: dict[str, Any],
                       input_size: int) -> np.ndarray:
    """Scale and resize raw images exactly as the encoder's training data were.

    A centre crop to a square, the card's pixel scaling (:func:`model.data.apply_scaling`),
    then, for images of another side than ``input_size``, an antialiased bilinear
    :func:`tf.image.resize` of each group of equally sized images.

    Parameters
    ----------
    raw : sequence of ndarray
        ``(H, W, C)`` images: 8-bit values for ``"uint8"`` scaling, nanomaggies for
        ``"asinh"``.
    scaling : dict
        The card's pixel scaling.
    input_size : int
        The encoder's input side.

    Returns
    -------
    ndarray
        float32 ``(N, input_size, input_size, C)``.
    """
    from model.data import apply_scaling

    out: list[np.ndarray | None] = [None] * len(raw)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(raw):
        groups.setdefault(tuple(centre_square(r).shape), []).append(i)
    for shape, idx in groups.items():
        x = np.stack([apply_scaling(centre_square(raw[i]), scaling) for i in idx])
        if shape[0] != input_size:
            import tensorflow as tf

            x = tf.image.resize(x, (input_size, input_size), antialias=True).numpy()
        for j, i in enumerate(idx):
            out[i] = x[j]
    done = [x for x in out if x is not None]
    return np.stack(done).astype(np.float32) if done else np.zeros(
        (0, input_size, input_size, 1), np.float32)
