"""Training callbacks: JSON-lines metrics, checkpoints, and label-free/kNN representation checks.

The metrics file is what the desktop (and a remote launcher) tails to plot a run live: one JSON
object a line, flushed as it is written, each with ``step``, ``epoch`` (fractional, in passes
over the data), the VICReg terms, the total, the learning rate and images per second. The
seed paper's open problem was judging VICReg training without labels; RankMe (Garrido et al.
2023, ICML), the effective rank of the embeddings, is logged at every line, and a kNN accuracy
on a labelled set when one is given.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf  # noqa: F401  (keras' backend here)

from model.vicreg import rankme


def knn_accuracy(
    train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray, test_y: np.ndarray, k: int = 20
) -> float:
    """Balanced accuracy of a cosine k-nearest-neighbour vote (majority of the k neighbours)."""
    a = train_z / (np.linalg.norm(train_z, axis=1, keepdims=True) + 1e-12)
    b = test_z / (np.linalg.norm(test_z, axis=1, keepdims=True) + 1e-12)
    sims = b @ a.T
    k = min(k, len(a))
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    classes = np.unique(train_y)
    votes = np.stack([(train_y[idx] == c).sum(axis=1) for c in classes], axis=1)
    pred = classes[np.argmax(votes, axis=1)]
    recalls = [np.mean(pred[test_y == c] == c) for c in np.unique(test_y)]
    return float(np.mean(recalls))


class MetricsLogger(keras.callbacks.Callback):
    """Append one JSON line of metrics every ``every`` steps (and at each checkpoint).

    Parameters
    ----------
    path : path-like
        The ``metrics.jsonl`` file (appended to, so a resumed run continues it).
    global_batch : int
        Images per step (for images/s and epochs).
    steps_per_epoch : int
        Steps in one pass over the data.
    every : int
        Log every this many steps.
    """

    def __init__(self, path: str | Path, global_batch: int, steps_per_epoch: int, every: int = 10):
        super().__init__()
        self.path = Path(path)
        self.global_batch = int(global_batch)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.every = max(1, int(every))
        self._t0 = time.perf_counter()
        self._last_step = 0

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (flushed and fsynced, so a tailing reader sees whole lines)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _lr(self) -> float:
        opt = self.model.optimizer
        lr = opt.learning_rate
        if callable(lr):  # a schedule
            return float(lr(opt.iterations))
        return float(keras.ops.convert_to_numpy(lr))

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Remember where this run starts (after a resume, not at 0)."""
        self._t0 = time.perf_counter()
        self._last_step = self._step()
        self.write({"event": "start", "time": time.time(), "step": self._last_step})

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Log every ``every`` steps."""
        step = self._step()
        if step % self.every == 0:
            self._log(step, logs or {}, "train")

    def _log(self, step: int, logs: dict, event: str) -> None:
        now = time.perf_counter()
        dt = now - self._t0
        n = step - self._last_step
        rate = n * self.global_batch / dt if dt > 0 and n > 0 else float("nan")
        self._t0, self._last_step = now, step
        record: dict[str, Any] = {
            "event": event,
            "time": time.time(),
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "lr": self._lr(),
            "images_per_s": rate if math.isfinite(rate) else None,
        }
        for k, v in logs.items():
            value = float(np.asarray(v))
            record[k] = value if math.isfinite(value) else None
        self.write(record)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Fit "epochs" are checkpoint intervals here: log one line at each."""
        self._log(self._step(), logs or {}, "checkpoint")


class Checkpointer(keras.callbacks.Callback):
    """Save model and optimizer state at each fit epoch end (``checkpoints/ckpt-STEP``).

    ``model.train`` runs fit with one "epoch" per checkpoint interval, so the checkpoint step
    is exact and a killed run resumes on the same learning-rate schedule. Keras weight files
    carry the optimizer's variables (its step counter included). Each file is written under a
    temporary name and renamed, then ``latest.json`` is replaced: a kill at any moment leaves
    the previous checkpoint usable. The newest ``keep`` checkpoints are kept.
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        super().__init__()
        self.folder = Path(folder)
        self.keep = max(1, int(keep))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save."""
        self.folder.mkdir(parents=True, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        name = f"ckpt-{step:09d}.weights.h5"
        tmp = self.folder / f"tmp-{name}"
        self.model.save_weights(tmp)
        tmp.replace(self.folder / name)
        index = self.folder / "latest.json"
        index_tmp = self.folder / "latest.json.tmp"
        index_tmp.write_text(json.dumps({"file": name, "step": step, "time": time.time()}))
        index_tmp.replace(index)
        for old in sorted(self.folder.glob("ckpt-*.weights.h5"))[: -self.keep]:
            old.unlink()


class KNNProbe(keras.callbacks.Callback):
    """kNN balanced accuracy of the encoder on a labelled set, logged as a metrics line.

    Parameters
    ----------
    images : numpy.ndarray
        (N, H, W, C) float32 images prepared like the training data (centre crop/resize to the
        encoder's input size).
    labels : numpy.ndarray
        (N,) integer or string labels.
    logger : MetricsLogger
        Where to write.
    every_epochs : int
        Run every this many fit epochs (checkpoint intervals).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, logger: MetricsLogger,
                 every_epochs: int = 1, seed: int = 0):
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels)
        self.logger = logger
        self.every = max(1, int(every_epochs))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.labels))
        half = len(order) // 2
        self.train_idx, self.test_idx = order[:half], order[half:]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Encode the labelled set and log kNN accuracy and RankMe."""
        if (epoch + 1) % self.every:
            return
        encoder = self.model.encoder
        z = encoder.predict(self.images, batch_size=256, verbose=0)
        acc = knn_accuracy(z[self.train_idx], self.labels[self.train_idx],
                           z[self.test_idx], self.labels[self.test_idx])
        self.logger.write({
            "event": "probe",
            "time": time.time(),
            "step": int(self.model.optimizer.iterations.numpy()),
            "knn_balanced_accuracy": acc,
            "rankme_labelled": float(rankme(z)),
        })
