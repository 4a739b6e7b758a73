"""Helper run in a subprocess by test_vicreg.py: one VICReg step on 1 vs 2 logical CPU devices.

Two logical CPU devices must be configured before TensorFlow initialises its devices, hence a
separate process. Prints one JSON line with the differences between
- the default strategy (one device, global batch),
- MirroredStrategy on /cpu:0 and /cpu:1 with the embeddings gathered (gather=True),
- the same without the gather (gather=False; per-replica loss),
after one SGD step (no momentum) on the same global batch from the same initial weights.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from model.distribute import describe, get_strategy  # noqa: E402
from model.encoder import Encoder  # noqa: E402
from model.vicreg import VICReg, build_projector  # noqa: E402

GLOBAL_BATCH = 16
SIZE = 16
LR = 0.1


def build(strategy, gather, weights=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        enc = Encoder(bands=3, input_size=SIZE, width=8, depths=[1, 1], embedding_dim=16)
        model = VICReg(enc, build_projector(16, [32, 32]), gather=gather)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), jit_compile=False)
    if weights is not None:
        model.set_weights(weights)
    return model


def step(model, x1, x2):
    before = [v.numpy().copy() for v in model.trainable_variables]
    ds = tf.data.Dataset.from_tensor_slices((x1, x2)).batch(GLOBAL_BATCH)
    hist = model.fit(ds, epochs=1, verbose=0)
    grads = [(b - v.numpy()) / LR for b, v in zip(before, model.trainable_variables, strict=True)]
    logs = {k: float(v[-1]) for k, v in hist.history.items()}
    return logs, grads, [w.copy() for w in model.get_weights()]


def main():
    rng = np.random.default_rng(1)
    x1 = rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), dtype=np.float32)
    x2 = np.clip(x1 + 0.1 * rng.standard_normal(x1.shape, dtype=np.float32), 0, 1)

    ref = build(tf.distribute.get_strategy(), gather=True)
    # Non-zero gammas everywhere so that every weight receives a gradient.
    init = [
        rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if "gamma" in v.path else w
        for v, w in zip(ref.weights, ref.get_weights(), strict=True)
    ]
    ref.set_weights(init)
    logs0, g0, w0 = step(ref, x1, x2)

    mirrored = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    out = {"strategy": describe(mirrored), "default": logs0, "grad_scale": _max(g0)}
    for gather in (True, False):
        model = build(mirrored, gather=gather, weights=init)
        logs, g, w = step(model, x1, x2)
        key = "gather" if gather else "no_gather"
        out[key] = {
            "logs": logs,
            "loss_diff": abs(logs["loss"] - logs0["loss"]),
            "metric_diff": {k: abs(logs[k] - logs0[k]) for k in logs0},
            "grad_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(g, g0, strict=True)),
            "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w, w0, strict=True)),
        }
    print(json.dumps(out))


def _max(arrays):
    return max(float(np.max(np.abs(a))) for a in arrays)


if __name__ == "__main__":
    main()
