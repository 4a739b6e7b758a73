"""VICReg self-supervised training (Bardes, Ponce & LeCun 2022, ICLR).

The loss of two embedded views ``z1``, ``z2`` (``N x d``) is

``L = sim_coeff * s(z1, z2) + std_coeff * (v(z1) + v(z2)) / 2 + cov_coeff * (c(z1) + c(z2))``

with the invariance ``s`` (mean squared error), the variance ``v`` (hinge on the per-dimension
standard deviation, target 1) and the covariance ``c`` (squared off-diagonal covariance entries,
divided by ``d``). The functions follow the authors' reference code (facebookresearch/vicreg,
``main_vicreg.py``): unbiased (``N - 1``) variance and covariance, ``eps = 1e-4`` inside the square
root, coefficients 25 / 25 / 1.

Under a ``tf.distribute`` strategy the variance and covariance are statistics of the *global*
batch, so :class:`VICReg` gathers the projections of every replica (``all_gather``) before the
loss, like the reference code's ``FullGatherLayer``. The gradient of ``all_gather`` sums the
upstream gradients of all replicas and the optimizer sums the replicas' gradients again, so the
loss is divided by the number of replicas before differentiation; the logged loss is the
unscaled global loss. The result does not depend on the number of devices.

The label-free representation metric is RankMe (Garrido, Balestriero, Najman & LeCun 2023, ICML):
the exponential of the entropy of the normalised singular values of a batch of representations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers

__all__ = [
    "VICReg",
    "build_projector",
    "covariance_loss",
    "embedding_std",
    "invariance_loss",
    "rankme",
    "variance_loss",
    "vicreg_loss",
]

METRIC_NAMES = ("loss", "invariance", "variance", "covariance", "std", "rankme")


def _f32(x: Any) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _centered(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    n = tf.cast(tf.shape(z)[0], z.dtype)
    return z - tf.reduce_mean(z, axis=0, keepdims=True), n


def invariance_loss(z1: Any, z2: Any) -> tf.Tensor:
    """Invariance term: mean squared error between the two views' embeddings.

    Parameters
    ----------
    z1, z2 : tensor of shape (N, d)
        Embeddings of two views of the same N images.

    Returns
    -------
    scalar tensor
        ``mean((z1 - z2) ** 2)`` over all N x d entries (Bardes et al. 2022, Eq. 5).
    """
    z1, z2 = _f32(z1), _f32(z2)
    return tf.reduce_mean(tf.square(z1 - z2))


def variance_loss(z: Any, eps: float = 1e-4) -> tf.Tensor:
    """Variance term: hinge on the standard deviation of every embedding dimension.

    Parameters
    ----------
    z : tensor of shape (N, d)
        Embeddings of one view, N >= 2.
    eps : float
        Added to the variance before the square root (numerical stability).

    Returns
    -------
    scalar tensor
        ``mean_j relu(1 - sqrt(Var(z[:, j]) + eps))`` with the unbiased (N - 1) variance
        (Bardes et al. 2022, Eq. 1-2; target gamma = 1).
    """
    z, n = _centered(_f32(z))
    var = tf.reduce_sum(tf.square(z), axis=0) / (n - 1.0)
    std = tf.sqrt(var + eps)
    return tf.reduce_mean(tf.nn.relu(1.0 - std))


def covariance_loss(z: Any) -> tf.Tensor:
    """Covariance term: squared off-diagonal entries of the covariance matrix, divided by d.

    Parameters
    ----------
    z : tensor of shape (N, d)
        Embeddings of one view, N >= 2.

    Returns
    -------
    scalar tensor
        ``sum_{i != j} C(z)_ij ** 2 / d`` with ``C(z) = zc^T zc / (N - 1)``, ``zc`` the centred
        embeddings (Bardes et al. 2022, Eq. 3-4).
    """
    z, n = _centered(_f32(z))
    d = tf.cast(tf.shape(z)[1], tf.float32)
    cov = tf.matmul(z, z, transpose_a=True) / (n - 1.0)
    off = tf.reduce_sum(tf.square(cov)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(cov)))
    return off / d


def vicreg_loss(
    z1: Any,
    z2: Any,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> dict[str, tf.Tensor]:
    """The VICReg loss and its three terms.

    Parameters
    ----------
    z1, z2 : tensor of shape (N, d)
        Projections of the two views.
    sim_coeff, std_coeff, cov_coeff : float
        Weights lambda, mu, nu of the invariance, variance and covariance terms (25, 25, 1 in
        Bardes et al. 2022).
    eps : float
        See :func:`variance_loss`.

    Returns
    -------
    dict
        ``invariance`` = s(z1, z2); ``variance`` = (v(z1) + v(z2)) / 2; ``covariance`` =
        c(z1) + c(z2); ``loss`` = the weighted sum. All float32 scalars.
    """
    inv = invariance_loss(z1, z2)
    var = 0.5 * (variance_loss(z1, eps) + variance_loss(z2, eps))
    cov = covariance_loss(z1) + covariance_loss(z2)
    total = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return {"loss": total, "invariance": inv, "variance": var, "covariance": cov}


def embedding_std(z: Any) -> tf.Tensor:
    """Mean over dimensions of the (unbiased) standard deviation of a batch of embeddings.

    Collapse shows as this value falling towards 0; VICReg's variance term holds it near 1.
    """
    z, n = _centered(_f32(z))
    return tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(z), axis=0) / (n - 1.0)))


def rankme(h: Any, eps: float = 1e-7) -> tf.Tensor:
    """RankMe effective rank of a batch of representations (Garrido et al. 2023, ICML).

    Parameters
    ----------
    h : tensor of shape (N, D)
        Encoder representations (not centred, as in the paper).
    eps : float
        Added to the normalised singular values before the logarithm.

    Returns
    -------
    scalar tensor
        ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) + eps``, between 1 and
        ``min(N, D)``; a collapsed representation gives ~1.
    """
    h = _f32(h)
    s = tf.linalg.svd(h, compute_uv=False)
    p = s / (tf.reduce_sum(s) + eps) + eps
    return tf.exp(-tf.reduce_sum(p * tf.math.log(p)))


def build_projector(input_dim: int, dims: Sequence[int], name: str = "projector") -> keras.Model:
    """The VICReg expander: (Dense - BN - ReLU) x (len(dims) - 1), then a linear Dense.

    Parameters
    ----------
    input_dim : int
        Size of the encoder representation.
    dims : sequence of int
        Output sizes of the layers (8192-8192-8192 in Bardes et al. 2022).
    name : str
        Model name.

    Returns
    -------
    keras.Model
        A functional model ``(N, input_dim) -> (N, dims[-1])`` with float32 output. Batch
        normalisation is synchronised across replicas (the reference code's ``SyncBatchNorm``);
        the dense layers before it have no bias (redundant with the BN shift).
    """
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"build_projector: input_dim must be a positive integer, got {input_dim}")
    dims = list(dims)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"build_projector: dims must be positive integers, got {dims}")
    inputs = keras.Input(shape=(input_dim,), name="representation")
    x = inputs
    for i, d in enumerate(dims[:-1]):
        x = layers.Dense(d, use_bias=False, name=f"dense{i + 1}")(x)
        x = layers.BatchNormalization(synchronized=True, name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
    x = layers.Dense(dims[-1], use_bias=False, name=f"dense{len(dims)}")(x)
    outputs = layers.Activation("linear", dtype="float32", name="projection")(x)
    return keras.Model(inputs, outputs, name=name)


def _replica_context() -> tuple[Any, int]:
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: nothing to gather from here
        return None, 1
    return ctx, int(ctx.num_replicas_in_sync)


@keras.saving.register_keras_serializable(package="ssald")
class VICReg(keras.Model):
    """Joint-embedding model trained with the VICReg loss (Bardes, Ponce & LeCun 2022, ICLR).

    ``fit()`` runs :meth:`train_step`, so callbacks, checkpoints and ``tf.distribute`` work as
    usual. Create the model (encoder and projector included) inside ``strategy.scope()``.

    Parameters
    ----------
    encoder : keras.Model
        Backbone, images -> representations (``model.encoder.Encoder``).
    projector : keras.Model
        Expander, representations -> embeddings on which the loss is computed
        (:func:`build_projector`).
    augmenter : callable or None
        Maps a float32 image batch to one randomly augmented view of the encoder's input size.
        When given, batches of plain images are accepted and augmented twice; with ``None`` the
        data must be pairs ``(view1, view2)``.
    sim_coeff, std_coeff, cov_coeff : float
        Loss weights (25, 25, 1).
    eps : float
        Variance-term epsilon (1e-4).
    gather : bool
        Gather the embeddings across replicas before the loss (the default and the right thing).
        ``False`` computes a per-replica loss; it exists only to show in tests that the gather
        matters.
    **kwargs
        Passed to ``keras.Model``.

    Notes
    -----
    Metrics: ``loss`` (unscaled global loss), ``invariance``, ``variance``, ``covariance``,
    ``std`` (mean per-dimension standard deviation of the projections, averaged over the two
    views) and ``rankme`` (RankMe of the first view's encoder representations of the global
    batch; Garrido et al. 2023).
    """

    def __init__(
        self,
        encoder: keras.Model,
        projector: keras.Model,
        augmenter: Callable[[Any], Any] | None = None,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for label, value in (
            ("sim_coeff", sim_coeff),
            ("std_coeff", std_coeff),
            ("cov_coeff", cov_coeff),
        ):
            if not value >= 0:
                raise ValueError(f"VICReg: {label} must be >= 0, got {value}")
        if not eps > 0:
            raise ValueError(f"VICReg: eps must be > 0, got {eps}")
        if augmenter is not None and not callable(augmenter):
            raise ValueError(f"VICReg: augmenter must be callable or None, got {augmenter!r}")
        enc_dim = _last_dim(getattr(encoder, "output_shape", None))
        proj_dim = _last_dim(getattr(projector, "input_shape", None))
        if enc_dim is not None and proj_dim is not None and enc_dim != proj_dim:
            raise ValueError(
                f"VICReg: the projector expects {proj_dim}-d inputs but the encoder outputs "
                f"{enc_dim}-d representations"
            )
        self.encoder = encoder
        self.projector = projector
        self.augmenter = augmenter
        self.sim_coeff = float(sim_coeff)
        self.std_coeff = float(std_coeff)
        self.cov_coeff = float(cov_coeff)
        self.eps = float(eps)
        self.gather = bool(gather)
        self._trackers = {n: keras.metrics.Mean(name=n) for n in METRIC_NAMES}
        # The sub-models are functional (built at creation); nothing else owns weights.
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The six metrics, reset by Keras at the start of each epoch."""
        return list(self._trackers.values())

    def call(self, x: Any, training: bool = False) -> Any:
        """Encoder representations of a batch of images."""
        return self.encoder(x, training=training)

    # -- training ---------------------------------------------------------------------------

    def _views(self, data: Any) -> tuple[Any, Any]:
        if isinstance(data, dict):
            raise ValueError("VICReg: expected image batches or (view1, view2) pairs, got a dict")
        if isinstance(data, (tuple, list)):
            items = [d for d in data if d is not None]
            if len(items) == 2:
                return items[0], items[1]
            if len(items) != 1:
                raise ValueError(
                    "VICReg: expected a batch of images or a pair (view1, view2), "
                    f"got a tuple of {len(items)} elements"
                )
            data = items[0]
        if self.augmenter is None:
            raise ValueError(
                "VICReg: got a batch of single images but no augmenter; pass augmenter= or "
                "feed pairs of views (view1, view2)"
            )
        return self.augmenter(data), self.augmenter(data)

    def _loss_terms(self, x1: Any, x2: Any, training: bool) -> tuple[dict[str, tf.Tensor], int]:
        h1 = self.encoder(x1, training=training)
        h2 = self.encoder(x2, training=training)
        z1 = tf.cast(self.projector(h1, training=training), tf.float32)
        z2 = tf.cast(self.projector(h2, training=training), tf.float32)
        h1 = tf.stop_gradient(tf.cast(h1, tf.float32))
        ctx, replicas = _replica_context()
        if self.gather and replicas > 1:
            z1 = ctx.all_gather(z1, axis=0)
            z2 = ctx.all_gather(z2, axis=0)
            h1 = ctx.all_gather(h1, axis=0)
        terms = vicreg_loss(z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps)
        terms["std"] = tf.stop_gradient(0.5 * (embedding_std(z1) + embedding_std(z2)))
        terms["rankme"] = rankme(h1)
        return terms, replicas

    def _update_metrics(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self._trackers.items():
            tracker.update_state(tf.stop_gradient(terms[name]))
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One optimisation step on a batch of pairs or of images (augmented twice)."""
        x1, x2 = self._views(data)
        with tf.GradientTape() as tape:
            terms, replicas = self._loss_terms(x1, x2, training=True)
            # all_gather's gradient sums over replicas and so does the optimizer: divide by R.
            scaled = terms["loss"] / float(replicas)
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return self._update_metrics(terms)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """The same metrics as :meth:`train_step`, without updating the weights."""
        x1, x2 = self._views(data)
        terms, _ = self._loss_terms(x1, x2, training=False)
        return self._update_metrics(terms)

    # -- serialisation ----------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """Sub-models and coefficients; the augmenter only if it is a Keras object."""
        augmenter = None
        if isinstance(self.augmenter, (keras.layers.Layer, keras.Operation)):
            augmenter = keras.saving.serialize_keras_object(self.augmenter)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "projector": keras.saving.serialize_keras_object(self.projector),
            "augmenter": augmenter,
            "sim_coeff": self.sim_coeff,
            "std_coeff": self.std_coeff,
            "cov_coeff": self.cov_coeff,
            "eps": self.eps,
            "gather": self.gather,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VICReg:
        """Rebuild from :meth:`get_config`."""
        config = dict(config)
        for key in ("encoder", "projector", "augmenter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _last_dim(shape: Any) -> int | None:
    try:
        if shape is None or isinstance(shape, list):
            return None
        dim = shape[-1]
        return int(dim) if dim is not None else None
    except (TypeError, IndexError, ValueError):
        return None
