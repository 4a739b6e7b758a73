"""ResNet-style image encoder for VICReg pre-training.

The backbone follows He et al. (2016), "Deep Residual Learning for Image Recognition", CVPR, with
the stride on the 3x3 convolution of bottleneck blocks ("ResNet v1.5") and the last batch
normalisation of every residual branch initialised to zero (Goyal et al. 2017), as in the
torchvision ResNet that the VICReg reference code trains (Bardes, Ponce & LeCun 2022, ICLR).

The stem is adapted to small (64 px) survey cutouts: instead of the ImageNet 7x7/2 convolution and
3x3/2 max-pool (a factor 4 that leaves a 16 px map), a 3x3/1 convolution sees every pixel at full
resolution and a 3x3/2 convolution then halves the map. With four stages the total stride is 16,
so a 64 px cutout ends in a 4x4 map.

Batch normalisation is synchronised across replicas (``synchronized=True``), the equivalent of the
``SyncBatchNorm`` conversion in the VICReg reference code: under a ``tf.distribute`` strategy the
statistics are those of the global batch, so training does not depend on the number of devices.
On one device it is ordinary batch normalisation.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from model.config import EncoderConfig

__all__ = ["Encoder", "build_encoder", "count_params", "total_stride"]

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def total_stride(depths: Sequence[int]) -> int:
    """Downsampling factor of the encoder: 2 in the stem and 2 at each stage after the first.

    Parameters
    ----------
    depths : sequence of int
        Number of residual blocks per stage.

    Returns
    -------
    int
        ``2 ** len(depths)``.
    """
    return 2 ** len(depths)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Encoder: {name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"Encoder: {name} must be a positive integer, got {value!r}")
    return int(value)


def _validate(
    bands: Any, input_size: Any, width: Any, depths: Any, bottleneck: Any, embedding_dim: Any
) -> tuple[int, int, int, list[int], bool, int]:
    bands = _positive_int("bands", bands)
    input_size = _positive_int("input_size", input_size)
    width = _positive_int("width", width)
    embedding_dim = _positive_int("embedding_dim", embedding_dim)
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or not depths:
        raise ValueError(
            "Encoder: depths must be a non-empty list of positive integers "
            f"(blocks per stage), got {depths!r}"
        )
    depths = [_positive_int(f"depths[{i}]", d) for i, d in enumerate(depths)]
    if not isinstance(bottleneck, bool):
        raise ValueError(f"Encoder: bottleneck must be True or False, got {bottleneck!r}")
    stride = total_stride(depths)
    if input_size % stride:
        raise ValueError(
            f"Encoder: input_size must be a multiple of the total stride {stride} "
            f"(2 ** len(depths) with {len(depths)} stages), got {input_size}"
        )
    return bands, input_size, width, depths, bottleneck, embedding_dim


def _conv(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn(x: Any, name: str, zero_gamma: bool = False) -> Any:
    return layers.BatchNormalization(
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=True,
        name=name,
    )(x)


def _shortcut(x: Any, filters: int, stride: int, name: str) -> Any:
    if stride == 1 and x.shape[-1] == filters:
        return x
    x = _conv(x, filters, 1, stride, name + "_proj_conv")
    return _bn(x, name + "_proj_bn")


def _basic_block(x: Any, filters: int, stride: int, name: str) -> Any:
    """Two 3x3 convolutions (He et al. 2016, Fig. 2 left)."""
    shortcut = _shortcut(x, filters, stride, name)
    y = _conv(x, filters, 3, stride, name + "_conv1")
    y = layers.ReLU(name=name + "_relu1")(_bn(y, name + "_bn1"))
    y = _conv(y, filters, 3, 1, name + "_conv2")
    y = _bn(y, name + "_bn2", zero_gamma=True)
    y = layers.Add(name=name + "_add")([shortcut, y])
    return layers.ReLU(name=name + "_out")(y)


def _bottleneck_block(x: Any, filters: int, stride: int, name: str) -> Any:
    """1x1 - 3x3 - 1x1 bottleneck with expansion 4 (He et al. 2016, Fig. 5 right)."""
    out = 4 * filters
    shortcut = _shortcut(x, out, stride, name)
    y = _conv(x, filters, 1, 1, name + "_conv1")
    y = layers.ReLU(name=name + "_relu1")(_bn(y, name + "_bn1"))
    y = _conv(y, filters, 3, stride, name + "_conv2")
    y = layers.ReLU(name=name + "_relu2")(_bn(y, name + "_bn2"))
    y = _conv(y, out, 1, 1, name + "_conv3")
    y = _bn(y, name + "_bn3", zero_gamma=True)
    y = layers.Add(name=name + "_add")([shortcut, y])
    return layers.ReLU(name=name + "_out")(y)


@keras.saving.register_keras_serializable(package="ssald")
class Encoder(keras.Model):
    """ResNet-style backbone mapping cutouts to a representation vector.

    A functional graph wrapped in a ``keras.Model`` subclass (the keras-io / KerasHub pattern),
    so it saves and loads as ``.keras`` with ``safe_mode=True``.

    Layout: stem (3x3/1 conv, BN, ReLU, 3x3/2 conv, BN, ReLU), then ``len(depths)`` stages of
    residual blocks (He et al. 2016) with ``width * 2**i`` filters (times 4 at the output of
    bottleneck blocks), stride 2 at the start of every stage but the first, global average pooling
    and, when the last stage's channel count differs from ``embedding_dim``, a linear Dense layer.
    The output is float32 even under a mixed-precision policy.

    Parameters
    ----------
    bands : int
        Input channels: 3 for RGB renders, 5 for ugriz cubes.
    input_size : int
        Height and width of the (square) input in pixels; a multiple of ``2 ** len(depths)``.
    width : int
        Filters of the first stage (64 in ResNet-18/50).
    depths : list of int
        Residual blocks per stage ([2, 2, 2, 2] for ResNet-18, [3, 4, 6, 3] for ResNet-50).
    bottleneck : bool
        Bottleneck blocks (ResNet-50 and deeper) instead of basic blocks.
    embedding_dim : int
        Size of the output representation.
    name : str
        Model name.
    **kwargs
        Passed to ``keras.Model`` (``trainable``, ``dtype``).

    Notes
    -----
    Input: float32 images of shape ``(batch, input_size, input_size, bands)``, channels last,
    values roughly in [0, 1]. Output: ``(batch, embedding_dim)``.

    References
    ----------
    He, K., Zhang, X., Ren, S. & Sun, J. (2016). Deep Residual Learning for Image Recognition.
    CVPR.
    Bardes, A., Ponce, J. & LeCun, Y. (2022). VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning. ICLR.
    """

    def __init__(
        self,
        bands: int = 3,
        input_size: int = 64,
        width: int = 32,
        depths: Sequence[int] = (2, 2, 2, 2),
        bottleneck: bool = False,
        embedding_dim: int = 128,
        name: str = "encoder",
        **kwargs: Any,
    ) -> None:
        bands, input_size, width, depths, bottleneck, embedding_dim = _validate(
            bands, input_size, width, depths, bottleneck, embedding_dim
        )
        inputs = keras.Input(shape=(input_size, input_size, bands), name="image")
        x = _conv(inputs, width, 3, 1, "stem_conv1")
        x = layers.ReLU(name="stem_relu1")(_bn(x, "stem_bn1"))
        x = _conv(x, width, 3, 2, "stem_conv2")
        x = layers.ReLU(name="stem_relu2")(_bn(x, "stem_bn2"))
        block = _bottleneck_block if bottleneck else _basic_block
        for s, depth in enumerate(depths):
            filters = width * 2**s
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                x = block(x, filters, stride, f"stage{s + 1}_block{b + 1}")
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if x.shape[-1] != embedding_dim:
            x = layers.Dense(embedding_dim, name="embedding")(x)
        outputs = layers.Activation("linear", dtype="float32", name="representation")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        self.bands = bands
        self.input_size = input_size
        self.width = width
        self.depths = depths
        self.bottleneck = bottleneck
        self.embedding_dim = embedding_dim

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready), for ``.keras`` saving."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "bands": self.bands,
            "input_size": self.input_size,
            "width": self.width,
            "depths": list(self.depths),
            "bottleneck": self.bottleneck,
            "embedding_dim": self.embedding_dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Encoder:
        """Rebuild from :meth:`get_config`."""
        return cls(**config)


def build_encoder(cfg: EncoderConfig, name: str = "encoder") -> Encoder:
    """Build an :class:`Encoder` from an :class:`~model.config.EncoderConfig`.

    Parameters
    ----------
    cfg : EncoderConfig
        Encoder section of a training configuration (``preset`` is only a label here: the preset
        values are merged into the other fields when the configuration is loaded).
    name : str
        Model name.

    Returns
    -------
    Encoder
    """
    return Encoder(
        bands=cfg.bands,
        input_size=cfg.input_size,
        width=cfg.width,
        depths=list(cfg.depths),
        bottleneck=cfg.bottleneck,
        embedding_dim=cfg.embedding_dim,
        name=name,
    )


def count_params(model: keras.Model, trainable_only: bool = False) -> int:
    """Number of scalar parameters of a model.

    Parameters
    ----------
    model : keras.Model
        A built model.
    trainable_only : bool
        Count only trainable weights (excludes batch-norm moving statistics).

    Returns
    -------
    int
    """
    weights = model.trainable_weights if trainable_only else model.weights
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total
