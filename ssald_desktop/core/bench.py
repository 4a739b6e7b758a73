"""Benchmarks behind ``ssald-cli bench``: figures as JSON, ratios against an in-process baseline.

Machines here are shared and noisy, so each benchmark also times a simple baseline in the same
process and reports the ratio, which is steadier than the absolute figure.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.cutouts import CutoutEngine, NormSpec, lupton_rgb
from ssald_desktop.core.frames import FrameSet, open_frame_set


def _best_rate(fn: Callable[[], int], repeats: int) -> float:
    """Best items-per-second of ``repeats`` runs of ``fn`` (which returns the item count)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn()
        dt = time.perf_counter() - t0
        best = max(best, count / dt)
    return best


def _random_positions(
    fs: FrameSet, n: int, margin: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random positions at least ``margin`` px inside every band."""
    rng = np.random.default_rng(seed)
    rows, cols = fs.shape
    x = rng.uniform(margin, cols - margin, 4 * n)
    y = rng.uniform(margin, rows - margin, 4 * n)
    sky = fs.reference.wcs.pixel_to_world(x, y)
    keep = fs.contains(sky, margin=margin)
    sky = sky[keep][:n]
    return sky.ra.deg, sky.dec.deg


def bench_cutouts(
    field: str | Path | FrameSet,
    n: int = 2000,
    batch: int = 256,
    repeats: int = 3,
    spec: NormSpec | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Five-band WCS-aligned cutouts plus Lupton RGB per second, from a field in memory.

    The baseline cuts the same positions with :class:`astropy.nddata.Cutout2D` at the nearest
    pixel of each band's own WCS (no sub-pixel alignment) and calls ``make_lupton_rgb`` per
    cutout: the straightforward way to do it.
    """
    from astropy.nddata import Cutout2D

    fs = field if isinstance(field, FrameSet) else open_frame_set(field)
    spec = spec or NormSpec()
    eng = CutoutEngine(fs, spec)
    ra, dec = _random_positions(fs, n, margin=spec.output_size, seed=seed)
    for b in spec.bands:  # one-off preparation of the flattened bands, not per cutout
        eng._flat_band(b)

    def ours() -> int:
        count = 0
        for sl, _data, _mask, _rgb in eng.iter_cutouts(ra, dec, batch=batch):
            count += sl.stop - sl.start
        return count

    n_base = min(len(ra), 300)

    def baseline() -> int:
        from astropy.coordinates import SkyCoord

        size = spec.output_size
        for k in range(n_base):
            c = SkyCoord(ra[k], dec[k], unit="deg")
            cubes = {
                b: Cutout2D(fs[b].data, c, size, wcs=fs[b].wcs, mode="partial").data
                for b in spec.bands
            }
            lupton_rgb(cubes[spec.rgb[0]], cubes[spec.rgb[1]], cubes[spec.rgb[2]], spec)
        return n_base

    rate = _best_rate(ours, repeats)
    base = _best_rate(baseline, repeats)
    return {
        "benchmark": "cutouts",
        "field": str(fs.field_id),
        "bands": "".join(spec.bands),
        "output_size": spec.output_size,
        "n_cutouts": int(len(ra)),
        "batch": batch,
        "repeats": repeats,
        "cutouts_per_s": rate,
        "baseline": "astropy Cutout2D per band (nearest pixel, unaligned) + make_lupton_rgb",
        "baseline_cutouts_per_s": base,
        "ratio_vs_baseline": rate / base,
        "goal_cutouts_per_s": 1000,
        "meets_goal": bool(rate >= 1000),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
            "processor": platform.machine(),
        },
    }
