"""Two-view image augmentations for VICReg, as TensorFlow graph ops.

Every image of a batch gets its own random parameters. The steps run in this order:

1. **Random resized crop** (Szegedy et al. 2015, as in SimCLR/VICReg). A box covering a
   fraction ``s`` of the input area (``s`` uniform in ``crop_scale``) with aspect ratio ``r``
   (log-uniform in ``crop_ratio``) is placed uniformly at random inside the image and
   resampled bilinearly to ``output_size`` x ``output_size`` (pixel-centre convention of
   ``tf.image.resize``, no antialiasing). A box wider or taller than the image is clipped to
   it. With ``crop_scale = crop_ratio = [1, 1]`` and ``output_size`` equal to the input size
   the crop is the identity, bit for bit.
2. **Sub-pixel shift**: the content moves by ``(dy, dx)``, each uniform in
   ``[-max_shift_px, max_shift_px]`` *output* pixels. The shift is folded into the crop's
   bilinear sampling (one interpolation instead of two); sampling positions outside the image
   are clamped to the edge pixels (edge replication), so no black border appears. Because
   the shift is drawn symmetrically, folding it before the flips gives the same distribution
   as shifting after them.
3. **Flips** (``flip``): a horizontal and a vertical flip, each with probability 1/2.
4. **90-degree rotations** (``rot90``): ``k`` uniform in 0..3, as :func:`tf.image.rot90`. The
   output is square, so nothing is cut and no corner is filled. Flips and rotations move
   pixels only: the multiset of pixel values is unchanged exactly.
5. **PSF-like blur**: with probability ``blur_probability`` a separable Gaussian of width
   ``sigma`` (uniform in ``blur_sigma_px``, output pixels), integrated over each pixel (erf)
   and normalised to sum 1; the borders are mirrored (symmetric padding), which with a
   symmetric kernel conserves the total flux exactly.
6. **Flux scaling**: every band of every image is multiplied by its own factor, uniform in
   ``flux_scale`` (a colour and brightness jitter).
7. **Gaussian noise**: zero-mean noise is *added* with standard deviation
   ``f * sky_sigma * flux_factor`` per band, where ``f`` is uniform in ``noise_sigma`` (one
   factor per image) and ``sky_sigma`` is the image's own sky noise measured robustly on the
   *input* image, before any step: ``1.4826 * MAD`` of the pixels of the border ring (width
   ``max(1, min(H, W) // 16)``, subsampled to 1024 pixels) per band (see
   :func:`robust_sky_sigma`). Nothing is rescaled or normalised; the noise step of
   the seed code was in effect ``(x - min) / (max - min)`` per image (an auto-contrast),
   which this is not.

``strength`` scales every range towards the identity: the crop scale range becomes
``1 - strength * (1 - crop_scale)``, the log aspect ratio range ``strength * log(crop_ratio)``,
the maximum shift, the noise factors and the blur widths are multiplied by ``strength``, and
the flux range becomes ``1 + strength * (flux_scale - 1)``. Flips and rotations have no
magnitude: they are on when enabled and ``strength > 0``. With ``strength = 0`` the
augmenter is the identity apart from the resize to ``output_size``.

Values are **not clipped** to [0, 1]: clipping would bias the mean of the added noise and
the scaled fluxes (and band-cube data in asinh units are not bounded by 1 anyway).

Randomness never comes from Python: each call draws one seed pair from a
:class:`tf.random.Generator` (a variable; deterministic for a given ``seed``) or uses the
``seed`` tensor given to it, and every step derives its own seed with
:func:`tf.random.experimental.stateless_split`. All draws are stateless ops, and the methods
have no tensor-dependent Python control flow (AutoGraph is told to leave them alone, which
keeps tracing fast). So the augmenter runs inside :meth:`tf.data.Dataset.map`, in a
:func:`tf.function`, under XLA and inside a Keras ``train_step`` under a
:class:`tf.distribute.Strategy` (where replicas draw different numbers from the generator).
In a ``tf.data`` pipeline on a machine with accelerators, pass the seeds through the data
(as :func:`model.data.make_training_dataset` does) rather than relying on the generator
variable, which may live on an accelerator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from model.config import AugmentConfig

__all__ = ["Augmenter", "robust_sky_sigma"]

_MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a Gaussian -> its standard deviation

# Order of the per-step seeds drawn by stateless_split (do not reorder: it changes views).
_SEED_NAMES = ("scale", "ratio", "offset", "shift", "flip", "rot", "blur_on", "blur", "flux",
               "noise_factor", "noise")


@tf.autograph.experimental.do_not_convert
def robust_sky_sigma(images: Any, border: int | None = None,
                     max_samples: int = 1024) -> tf.Tensor:
    """Per-image, per-band sky noise: ``1.4826 * MAD`` of the pixels of the border ring.

    The median absolute deviation is insensitive to the galaxy light that reaches the border
    as long as it covers less than half of the ring (Rousseeuw & Croux 1993).

    Parameters
    ----------
    images : tf.Tensor
        A float batch ``(B, H, W, C)``.
    border : int, optional
        Width of the ring in pixels; default ``max(1, min(H, W) // 16)``.
    max_samples : int
        The ring is subsampled with a regular stride to at most this many pixels per band
        (sorting is the cost; 1024 samples give the MAD to ~4 %). Needs static H and W.

    Returns
    -------
    tf.Tensor
        ``(B, C)`` float32 standard deviations (0 where the ring is flat).
    """
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    rows, cols = x.shape[1], x.shape[2]
    b: Any
    if border is not None:
        b = int(border)
    elif rows is not None and cols is not None:
        b = max(1, min(rows, cols) // 16)
    else:
        b = tf.maximum(1, tf.minimum(tf.shape(x)[1], tf.shape(x)[2]) // 16)
    channels = tf.shape(x)[-1]
    batch = tf.shape(x)[0]
    parts = [x[:, :b], x[:, -b:], x[:, b:-b, :b], x[:, b:-b, -b:]]
    ring = tf.concat([tf.reshape(p, [batch, -1, channels]) for p in parts], axis=1)
    n = ring.shape[1]
    if n is not None and n > max_samples:
        ring = ring[:, :: int(math.ceil(n / max_samples))]
    med = _median(ring)
    mad = _median(tf.abs(ring - med[:, None, :]))
    return _MAD_TO_SIGMA * mad


def _median(v: tf.Tensor) -> tf.Tensor:
    """Median over axis 1 of ``(B, N, C)`` (mean of the two middle values for even N)."""
    s = tf.sort(v, axis=1)
    n = tf.shape(v)[1]
    return 0.5 * (tf.gather(s, (n - 1) // 2, axis=1) + tf.gather(s, n // 2, axis=1))


def _bilinear_crop(images: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, h: tf.Tensor,
                   w: tf.Tensor, dy: tf.Tensor, dx: tf.Tensor, size: int) -> tf.Tensor:
    """Resample the box ``[y0, y0+h) x [x0, x0+w)`` of each image to ``size`` x ``size``.

    Coordinates are pixel edges (pixel ``j`` covers ``[j, j+1)``); output pixel ``i`` samples
    the input at ``y0 + (i + 0.5) * h / size - 0.5 - dy * h / size`` (content moved by ``dy``
    output pixels), clamped to the image (edge replication). Separable and gather-based, so it
    is exact where the sampling positions are integers and runs under XLA.
    """
    shape = tf.shape(images)
    rows, cols = shape[1], shape[2]
    centres = tf.range(size, dtype=tf.float32) + 0.5

    def axis_coords(start, extent, shift, n):
        step = extent / size
        pos = start[:, None] + centres[None, :] * step[:, None] - 0.5 - (shift * step)[:, None]
        pos = tf.clip_by_value(pos, 0.0, tf.cast(n - 1, tf.float32))
        lo = tf.floor(pos)
        frac = pos - lo
        lo_i = tf.cast(lo, tf.int32)
        hi_i = tf.minimum(lo_i + 1, n - 1)
        return lo_i, hi_i, frac

    ylo, yhi, fy = axis_coords(y0, h, dy, rows)
    xlo, xhi, fx = axis_coords(x0, w, dx, cols)
    fy = fy[:, :, None, None]
    top = tf.gather(images, ylo, axis=1, batch_dims=1)
    bottom = tf.gather(images, yhi, axis=1, batch_dims=1)
    out = top * (1.0 - fy) + bottom * fy
    fx = fx[:, None, :, None]
    left = tf.gather(out, xlo, axis=2, batch_dims=1)
    right = tf.gather(out, xhi, axis=2, batch_dims=1)
    return left * (1.0 - fx) + right * fx


def _d4_permutations(n: int) -> np.ndarray:
    """Flat source indices ``(16, n*n)`` of the flips and rotations of an n x n image.

    Row ``8 * flip_h + 4 * flip_v + k``: flip left-right if ``flip_h``, then up-down if
    ``flip_v``, then rotate by ``k`` quarter turns counter-clockwise (as
    :func:`tf.image.rot90`). Built once with numpy at construction.
    """
    idx = np.arange(n * n, dtype=np.int32).reshape(n, n)
    out = np.empty((16, n * n), np.int32)
    for fh in (0, 1):
        for fv in (0, 1):
            for k in range(4):
                m = idx[:, ::-1] if fh else idx
                m = m[::-1] if fv else m
                out[8 * fh + 4 * fv + k] = np.rot90(m, k).ravel()
    return out


def _gaussian_taps(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Pixel-integrated Gaussian taps ``(B, 2 radius + 1)``, normalised to sum 1.

    ``sigma = 0`` gives a delta (the identity).
    """
    t = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    s = tf.maximum(sigma, 1e-6)[:, None] * math.sqrt(2.0)
    taps = 0.5 * (tf.math.erf((t + 0.5) / s) - tf.math.erf((t - 0.5) / s))
    return taps / tf.reduce_sum(taps, axis=1, keepdims=True)


def _blur_axis(x: tf.Tensor, taps: tf.Tensor, radius: int, axis: int) -> tf.Tensor:
    """Convolve along ``axis`` (1 or 2) with per-image taps, mirrored borders."""
    pad = [[0, 0], [0, 0], [0, 0], [0, 0]]
    pad[axis] = [radius, radius]
    xp = tf.pad(x, pad, mode="SYMMETRIC")
    n = tf.shape(x)[axis]
    out = tf.zeros_like(x)
    for k in range(2 * radius + 1):
        part = xp[:, k:k + n] if axis == 1 else xp[:, :, k:k + n]
        out += taps[:, k, None, None, None] * part
    return out


class Augmenter:
    """Random two-view augmentations of image batches (see the module docstring).

    Parameters
    ----------
    cfg : AugmentConfig
        Ranges and switches; validated here.
    output_size : int
        Side of the (square) output views in pixels.
    bands : int
        Number of channels of the images (3 for RGB, 5 for ugriz cubes).
    seed : int, optional
        Seed of the generator behind :meth:`__call__`; ``None`` draws a non-deterministic one.

    Raises
    ------
    ValueError
        Impossible parameters (a :class:`model.config.ConfigError` for the configuration).

    Notes
    -----
    The augmenter is a plain object, not a Keras layer, and is not saved with the exported
    encoder. Its only state is the :class:`tf.random.Generator` created here: create the
    augmenter outside ``strategy.scope()`` (replicas then share the stream) or inside it
    (each replica gets its own stream); both give different views on every replica.
    """

    def __init__(self, cfg: AugmentConfig, output_size: int, bands: int,
                 seed: int | None = None):
        if not isinstance(cfg, AugmentConfig):
            raise TypeError(f"cfg must be an AugmentConfig, got {type(cfg).__name__}")
        cfg.validate()
        if isinstance(output_size, bool) or int(output_size) != output_size or output_size < 1:
            raise ValueError(f"output_size must be a positive integer, got {output_size!r}")
        if isinstance(bands, bool) or int(bands) != bands or bands < 1:
            raise ValueError(f"bands must be a positive integer, got {bands!r}")
        self.cfg = cfg
        self.output_size = int(output_size)
        self.bands = int(bands)
        self.seed = seed
        st = float(cfg.strength)
        self.scale_range = tuple(max(1e-3, 1.0 - st * (1.0 - v)) for v in cfg.crop_scale)
        self.log_ratio_range = tuple(st * math.log(max(v, 1e-6)) for v in cfg.crop_ratio)
        self.max_shift = st * float(cfg.max_shift_px)
        self.flip = bool(cfg.flip) and st > 0
        self.rot90 = bool(cfg.rot90) and st > 0
        self.blur_range = tuple(st * float(v) for v in cfg.blur_sigma_px)
        self.blur_probability = float(cfg.blur_probability)
        self.blur_radius = int(math.ceil(3.0 * self.blur_range[1]))
        self.flux_range = tuple(max(0.0, 1.0 + st * (float(v) - 1.0)) for v in cfg.flux_scale)
        self.noise_range = tuple(st * float(v) for v in cfg.noise_sigma)
        self.do_blur = self.blur_radius > 0 and self.blur_probability > 0
        self.do_flux = self.flux_range != (1.0, 1.0)
        self.do_noise = self.noise_range[1] > 0
        self._d4 = tf.constant(_d4_permutations(self.output_size))
        if seed is None:
            self._generator = tf.random.Generator.from_non_deterministic_state()
        else:
            self._generator = tf.random.Generator.from_seed(int(seed))

    def __repr__(self) -> str:
        return (f"Augmenter(output_size={self.output_size}, bands={self.bands}, "
                f"strength={self.cfg.strength}, seed={self.seed})")

    # -- parameters ---------------------------------------------------------------------------
    def _check(self, images: Any) -> tf.Tensor:
        x = tf.convert_to_tensor(images)
        if not x.dtype.is_floating:
            raise TypeError(f"images must be a float tensor scaled to ~[0, 1], got {x.dtype}")
        x = tf.cast(x, tf.float32)
        if x.shape.rank != 4:
            raise ValueError(f"images must have shape (batch, H, W, bands), got {x.shape}")
        if x.shape[-1] is not None and x.shape[-1] != self.bands:
            raise ValueError(
                f"the augmenter was built for {self.bands} bands but the images have "
                f"{x.shape[-1]} (shape {x.shape})"
            )
        return x

    def _next_seed(self, seed: Any = None) -> tf.Tensor:
        if seed is None:
            return self._generator.make_seeds(1)[:, 0]
        s = tf.convert_to_tensor(seed)
        if s.shape.rank == 0:
            s = tf.stack([tf.cast(s, tf.int64), tf.constant(0, tf.int64)])
        return tf.cast(s, tf.int64)

    @tf.autograph.experimental.do_not_convert
    def sample_params(self, images: Any, seed: Any = None,
                      sky_sigma: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Draw the random parameters of one view of each image.

        Parameters
        ----------
        images : tf.Tensor
            The float batch ``(B, H, W, bands)`` the view will be made from.
        seed : tensor of 2 integers, optional
            Stateless seed; ``None`` draws one from the augmenter's generator.
        sky_sigma : tf.Tensor, optional
            ``(B, bands)`` sky noise of ``images`` if already known (two views share it);
            default :func:`robust_sky_sigma` of ``images``.

        Returns
        -------
        dict of str to tf.Tensor
            ``box`` (B, 4) crop ``y0, x0, h, w`` in input pixels; ``shift`` (B, 2) ``dy, dx``
            in output pixels; ``flip_h``, ``flip_v`` (B,) bool; ``rot`` (B,) int32 in 0..3;
            ``blur_sigma`` (B,) in output pixels (0: not blurred); ``flux`` (B, bands);
            ``noise_factor`` (B,); ``sky_sigma`` (B, bands); ``noise_sigma`` (B, bands), the
            standard deviation of the added noise; ``noise_seed`` (2,).
        """
        x = self._check(images)
        seeds = tf.random.experimental.stateless_split(self._next_seed(seed), len(_SEED_NAMES))
        s = {name: seeds[i] for i, name in enumerate(_SEED_NAMES)}
        shape = tf.shape(x)
        batch = shape[0]
        rows = tf.cast(shape[1], tf.float32)
        cols = tf.cast(shape[2], tf.float32)

        def uniform(name, lo, hi, extra=()):
            return tf.random.stateless_uniform([batch, *extra], s[name], lo, hi, tf.float32)

        area = uniform("scale", *self.scale_range)
        ratio = tf.exp(uniform("ratio", *self.log_ratio_range))
        w = tf.minimum(cols * tf.sqrt(area * ratio), cols)
        h = tf.minimum(rows * tf.sqrt(area / ratio), rows)
        off = uniform("offset", 0.0, 1.0, (2,))
        box = tf.stack([off[:, 0] * (rows - h), off[:, 1] * (cols - w), h, w], axis=1)
        shift = uniform("shift", -self.max_shift, self.max_shift, (2,))
        flips = uniform("flip", 0.0, 1.0, (2,)) < 0.5
        if not self.flip:
            flips = tf.zeros_like(flips)
        rot = tf.random.stateless_uniform([batch], s["rot"], 0, 4, tf.int32)
        if not self.rot90:
            rot = tf.zeros_like(rot)
        blur_on = uniform("blur_on", 0.0, 1.0) < self.blur_probability
        blur_sigma = tf.where(blur_on, uniform("blur", *self.blur_range), 0.0)
        if not self.do_blur:
            blur_sigma = tf.zeros_like(blur_sigma)
        flux = uniform("flux", self.flux_range[0], self.flux_range[1], (self.bands,))
        noise_factor = uniform("noise_factor", *self.noise_range)
        if sky_sigma is not None:
            sky = tf.cast(sky_sigma, tf.float32)
        elif self.do_noise:
            sky = robust_sky_sigma(x)
        else:
            sky = tf.zeros([batch, self.bands], tf.float32)
        return {
            "box": box, "shift": shift, "flip_h": flips[:, 0], "flip_v": flips[:, 1],
            "rot": rot, "blur_sigma": blur_sigma, "flux": flux, "noise_factor": noise_factor,
            "sky_sigma": sky, "noise_sigma": noise_factor[:, None] * sky * flux,
            "noise_seed": s["noise"],
        }

    # -- the view -----------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def apply(self, images: Any, params: dict[str, tf.Tensor]) -> tf.Tensor:
        """Make the view of ``images`` described by ``params`` (from :meth:`sample_params`)."""
        x = self._check(images)
        static_batch = x.shape[0]
        box = params["box"]
        shift = params["shift"]
        x = _bilinear_crop(x, box[:, 0], box[:, 1], box[:, 2], box[:, 3],
                           shift[:, 0], shift[:, 1], self.output_size)
        if self.flip or self.rot90:
            # Flips then rotation, as one exact pixel permutation per image (a gather).
            which = (tf.cast(params["flip_h"], tf.int32) * 8
                     + tf.cast(params["flip_v"], tf.int32) * 4 + params["rot"])
            perm = tf.gather(self._d4, which)
            n = self.output_size
            flat = tf.reshape(x, [-1, n * n, self.bands])
            x = tf.reshape(tf.gather(flat, perm, batch_dims=1), [-1, n, n, self.bands])
        if self.do_blur:
            taps = _gaussian_taps(params["blur_sigma"], self.blur_radius)
            x = _blur_axis(_blur_axis(x, taps, self.blur_radius, 1), taps, self.blur_radius, 2)
        if self.do_flux:
            x = x * params["flux"][:, None, None, :]
        if self.do_noise:
            noise = tf.random.stateless_normal(tf.shape(x), params["noise_seed"], dtype=tf.float32)
            x = x + noise * params["noise_sigma"][:, None, None, :]
        x.set_shape([static_batch, self.output_size, self.output_size, self.bands])
        return x

    @tf.autograph.experimental.do_not_convert
    def __call__(self, images: Any, seed: Any = None,
                 sky_sigma: tf.Tensor | None = None) -> tf.Tensor:
        """One independently drawn view of each image.

        Parameters
        ----------
        images : tf.Tensor
            Float batch ``(B, H, W, bands)`` (a single ``(H, W, bands)`` image is accepted too).
        seed : tensor of 2 integers, optional
            Stateless seed (same seed, same view); ``None`` draws from the generator.
        sky_sigma : tf.Tensor, optional
            Precomputed ``(B, bands)`` sky noise (see :meth:`sample_params`).

        Returns
        -------
        tf.Tensor
            ``(B, output_size, output_size, bands)`` float32.
        """
        x = tf.convert_to_tensor(images)
        single = x.shape.rank == 3
        if single:
            x = x[None]
        out = self.apply(x, self.sample_params(x, seed, sky_sigma))
        return out[0] if single else out

    @tf.autograph.experimental.do_not_convert
    def two_views(self, images: Any, seed: Any = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Two independently drawn views ``(v1, v2)`` of each image (see :meth:`__call__`).

        The sky noise of the input is measured once and shared by the two views.
        """
        x = tf.convert_to_tensor(images)
        single = x.shape.rank == 3
        if single:
            x = x[None]
        x = self._check(x)
        sky = robust_sky_sigma(x) if self.do_noise else None
        if seed is None:
            v1, v2 = self(x, None, sky), self(x, None, sky)
        else:
            pair = tf.random.experimental.stateless_split(self._next_seed(seed), 2)
            v1, v2 = self(x, pair[0], sky), self(x, pair[1], sky)
        return (v1[0], v2[0]) if single else (v1, v2)
