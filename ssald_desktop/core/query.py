"""Query by image: a dropped FITS or PNG/JPEG file, or an indexed object ("more like this").

A query file goes through exactly the preprocessing of the indexed data (recorded in the
store's header, :mod:`ssald_desktop.core.embeddings`): the encoder card's pixel scaling, a
centre crop to a square, and a resize of the whole image to the encoder's input size with
the same function (:func:`~ssald_desktop.core.embeddings.prepare_images`); pictures and FITS
arrays are flipped to the row order of the indexed images (FITS row 0 is the south edge,
a picture's row 0 its top).

Query files
-----------
- PNG/JPEG: 8-bit RGB, RGBA (alpha dropped) or grayscale (repeated to RGB), e.g. an SDSS
  SkyServer cutout. Needs an index of 8-bit colour images. 16-bit or floating-point images,
  empty or 1-pixel images are refused.
- FITS: the first HDU with a 2-D image (one band) or a 3-D cube ``(bands, H, W)``; a cutout
  written by ``ssald-cli cutouts`` (one HDU per band, ``NORMSPEC`` in the primary header) is
  read as its band cube. For an index of band cubes (asinh scaling) the band count must be the
  encoder's. For an index of colour composites, linear pixel values (nanomaggies) become a
  Lupton et al. (2004) composite with the NormSpec (the query's own, else the index's): a cube
  with the NormSpec's bands gives its ``rgb`` bands, a 3-plane cube is (red, green, blue) as
  :func:`astropy.visualization.make_lupton_rgb` takes them (e.g. i, r, g), one band gives a
  grey composite (with a warning: colour is lost). An 8-bit FITS (BITPIX 8) is taken as
  pixels (3 planes RGB or 1 plane grey). Any other band count is refused, naming the file.
- A query whose NormSpec (from a FITS header) differs from the index's is refused.

Several examples
----------------
Positives are combined either by ``"mean"`` (the query is the normalised mean of the
normalised positive embeddings, one search) or ``"max"`` (best match: each candidate scores
its highest cosine to any positive; one search per positive, candidates merged). Negatives
re-rank: a pool of candidates (``max(4k, k + 100)``) is scored
``s(x) = s_pos(x) - w * max_j cos(x, n_j)`` (default ``w = 0.5``), so images that look like a
negative drop down while the ranking stays anchored on the positives. Indexed objects given as
queries or negatives never appear in the results; a query file that is itself in the index
does (it comes first, with similarity 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.embeddings import (
    BOTTOM_UP,
    EmbeddingStore,
    EncoderInfo,
    encoder_info,
    normspec_digest,
    prepare_images,
    read_image,
)
from ssald_desktop.core.errors import DataFileError, InvalidQueryError
from ssald_desktop.core.index import SimilarityIndex, l2_normalise, open_index

__all__ = [
    "COMBINE",
    "FITS_SUFFIXES",
    "Hit",
    "QueryInput",
    "SearchResult",
    "Searcher",
    "read_fits_query",
    "search",
]

COMBINE = ("mean", "max")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fits.bz2")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_NEGATIVE_WEIGHT = 0.5


@dataclass
class QueryInput:
    """One query example after preprocessing.

    Attributes
    ----------
    name : str
        The file or the object id.
    kind : str
        ``"png/jpeg"``, ``"fits"`` or ``"object"``.
    vector : ndarray
        Its embedding (unit length).
    normspec_digest : str or None
        NormSpec of the file, when it carries one.
    warnings : list of str
        What could not be matched exactly.
    """

    name: str
    kind: str
    vector: np.ndarray = field(repr=False)
    normspec_digest: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the vector."""
        return {"name": self.name, "kind": self.kind, "normspec_digest": self.normspec_digest,
                "warnings": self.warnings}


@dataclass
class Hit:
    """One result.

    Attributes
    ----------
    rank : int
        1-based.
    id : str
        Object id.
    similarity : float
        The ranking score: cosine to the combined positives, minus the negative term.
    cosine : float
        Cosine similarity to the positives (mean query, or best positive with ``"max"``).
    row : int
        Row in the store.
    ra, dec : float
        Degrees (NaN when unknown).
    source : str
        File (or shard) the object was encoded from.
    """

    rank: int
    id: str
    similarity: float
    cosine: float
    row: int
    ra: float
    dec: float
    source: str


@dataclass
class SearchResult:
    """Results of one search, with what was asked."""

    hits: list[Hit]
    k: int
    combine: str
    negative_weight: float
    positives: list[QueryInput]
    negatives: list[QueryInput]
    index: dict[str, Any]

    @property
    def warnings(self) -> list[str]:
        """Warnings of every query input."""
        return [w for q in self.positives + self.negatives for w in q.warnings]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN positions as null)."""
        def clean(h: Hit) -> dict[str, Any]:
            d = asdict(h)
            for key in ("ra", "dec"):
                if isinstance(d[key], float) and math.isnan(d[key]):
                    d[key] = None
            return d

        return {"k": self.k, "combine": self.combine, "negative_weight": self.negative_weight,
                "positives": [q.to_dict() for q in self.positives],
                "negatives": [q.to_dict() for q in self.negatives],
                "index": self.index, "warnings": self.warnings,
                "results": [clean(h) for h in self.hits]}


# --------------------------------------------------------------------------------------------
# Reading query files
# --------------------------------------------------------------------------------------------


def _is_fits(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        return True
    if name.endswith(IMAGE_SUFFIXES):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(9) == b"SIMPLE  ="
    except OSError:
        return False


def read_fits_query(path: str | Path) -> tuple[np.ndarray, dict[str, Any] | None, bool]:
    """Read a FITS query image as a ``(bands, H, W)`` array.

    Parameters
    ----------
    path : path-like
        A FITS file (see the module docstring).

    Returns
    -------
    cube : ndarray
        ``(bands, H, W)`` (FITS row order: row 0 south).
    normspec : dict or None
        From the ``NORMSPEC`` header card of an ``ssald-cli cutouts`` file.
    eight_bit : bool
        True for BITPIX 8 data (pixels, not fluxes).

    Raises
    ------
    DataFileError
        Not FITS, no image, more than three axes, an image smaller than 2 x 2.
    """
    from astropy.io import fits

    p = Path(path)
    try:
        with fits.open(p, memmap=False) as hdul:
            hdr = hdul[0].header
            spec = None
            if "NORMSPEC" in hdr:
                try:
                    spec = json.loads(str(hdr["NORMSPEC"]))
                except json.JSONDecodeError as exc:
                    raise DataFileError(f"{p}: the NORMSPEC header card is not JSON") from exc
            cube = None
            bands = spec.get("bands") if isinstance(spec, dict) else None
            if bands and all(b.upper() in hdul for b in bands):
                cube = np.stack([np.asarray(hdul[b.upper()].data, np.float32) for b in bands])
                eight_bit = False
            else:
                for hdu in hdul:
                    if getattr(hdu, "is_image", False) and hdu.data is not None and (
                            hdu.data.ndim >= 2):
                        data = np.asarray(hdu.data)
                        eight_bit = data.dtype == np.uint8
                        while data.ndim > 3 and data.shape[0] == 1:
                            data = data[0]
                        if data.ndim > 3:
                            raise DataFileError(f"{p}: a {data.ndim}-axis image {data.shape}; a "
                                                "query is one band (2-D) or a cube (bands, H, W)")
                        cube = data[None] if data.ndim == 2 else data
                        break
    except DataFileError:
        raise
    except (OSError, TypeError, ValueError, IndexError) as exc:
        raise DataFileError(f"{p}: not a readable FITS file ({exc})") from exc
    if cube is None:
        raise DataFileError(f"{p}: no image HDU in this FITS file")
    if cube.shape[-1] < 2 or cube.shape[-2] < 2 or cube.shape[0] < 1:
        raise DataFileError(f"{p}: the image is {cube.shape[-1]}x{cube.shape[-2]} pixels, too "
                            "small to search with (empty or 1-pixel image)")
    if not eight_bit:
        cube = cube.astype(np.float32)
    return cube, spec, bool(eight_bit)


# --------------------------------------------------------------------------------------------
# The searcher
# --------------------------------------------------------------------------------------------


class Searcher:
    """Search one index (an embedding store folder with its saved index).

    Parameters
    ----------
    folder : path-like
        The store folder (``store.json``, ``vectors.f32``, ``objects.sqlite``, ``index.faiss``).
    encoder : path-like, optional
        The encoder for query files (default: the one recorded in the store); it must be the
        encoder that made the vectors.
    verify : bool
        Check the index file's checksum when loading.
    """

    def __init__(self, folder: str | Path, encoder: str | Path | None = None,
                 verify: bool = True):
        self.folder = Path(folder)
        self.store = EmbeddingStore(self.folder, create=False)
        self.index: SimilarityIndex = open_index(self.store, verify=verify)
        self._encoder_path = encoder
        self._info: EncoderInfo | None = None
        self._model: Any = None

    @property
    def header(self) -> dict[str, Any]:
        """The store header (preprocessing and identity)."""
        return self.store.header

    def encoder_info(self) -> EncoderInfo:
        """The store's encoder (checked against the store's encoder id)."""
        if self._info is None:
            path = self._encoder_path or self.header.get("encoder_path")
            if path and not Path(path).is_absolute() and self._encoder_path is None:
                path = str(self.folder / path)  # a bundled store names it relative to itself
            if not path or not Path(path).exists():
                raise DataFileError(f"{path}: the encoder that made the index at {self.folder} "
                                    "is missing; give its path (--encoder)")
            info = encoder_info(path)
            if info.encoder_id != self.store.encoder_id:
                raise DataFileError(
                    f"{path}: encoder {info.encoder_id[:12]} did not make the index at "
                    f"{self.folder} (encoder {str(self.store.encoder_id)[:12]}); its "
                    "embeddings are not comparable")
            self._info = info
        return self._info

    def _model_for(self) -> Any:
        if self._model is None:
            from ssald_desktop.core.embeddings import load_encoder_checked

            self._model = load_encoder_checked(self.encoder_info())
        return self._model

    # -- preprocessing -----------------------------------------------------------------------
    def raw_query_image(self, path: str | Path) -> tuple[np.ndarray, str | None, list[str]]:
        """A query file as a raw ``(H, W, C)`` image in the index's units and row order.

        Returns
        -------
        image : ndarray
            8-bit values or nanomaggies, as the indexed images before scaling.
        normspec_digest : str or None
            The file's NormSpec digest (FITS cutouts).
        warnings : list of str
        """
        p = Path(path)
        if not p.exists():
            raise DataFileError(f"{p}: no such file")
        h = self.header
        scaling = h.get("scaling") or {"kind": "uint8"}
        bands = int(h.get("bands", 3))
        bottom_up = h.get("row_order") == BOTTOM_UP
        notes: list[str] = []
        if not _is_fits(p):
            if scaling.get("kind") != "uint8":
                raise DataFileError(
                    f"{p}: the index at {self.folder} holds {bands}-band cubes in nanomaggies; a "
                    "PNG/JPEG render cannot be preprocessed like them: query with a FITS cube")
            img = read_image(p, bands)
            return (img[::-1] if bottom_up else img), None, notes
        cube, qspec, eight_bit = read_fits_query(p)
        img, qdigest, more = self.raw_from_cube(cube, qspec, eight_bit, str(p))
        return img, qdigest, notes + more

    def raw_from_cube(self, cube: np.ndarray, qspec: dict[str, Any] | None,
                      eight_bit: bool = False, name: str = "the cutout"
                      ) -> tuple[np.ndarray, str | None, list[str]]:
        """A ``(bands, H, W)`` array in FITS row order as a raw image of the index's kind.

        Parameters
        ----------
        cube : ndarray
            Fluxes (nanomaggies) or, with ``eight_bit``, 8-bit pixels.
        qspec : dict or None
            The cube's NormSpec, when known (checked against the index's).
        eight_bit : bool
            Pixels rather than fluxes.
        name : str
            For messages.

        Returns
        -------
        image, normspec_digest, warnings
            As :meth:`raw_query_image`.
        """
        from ssald_desktop.core.cutouts import NormSpec, lupton_rgb

        p = Path(name)
        h = self.header
        scaling = h.get("scaling") or {"kind": "uint8"}
        bands = int(h.get("bands", 3))
        bottom_up = h.get("row_order") == BOTTOM_UP
        notes: list[str] = []
        qdigest = normspec_digest(qspec) if qspec is not None else None
        idigest = h.get("normspec_digest", "none")
        if qdigest is not None and idigest != "none" and qdigest != idigest:
            raise InvalidQueryError(
                f"{p}: cut with NormSpec {qdigest}, but the index at {self.folder} holds "
                f"cutouts of NormSpec {idigest}: cut the query again with the index's NormSpec "
                "(ssald-cli cutouts --normspec)")
        if qdigest is not None and idigest == "none":
            notes.append(f"{p.name}: a cutout of NormSpec {qdigest} against an index of plain "
                         "images whose preprocessing is unknown")
        nb = cube.shape[0]
        if scaling.get("kind") == "asinh":
            if nb != bands:
                raise DataFileError(f"{p}: {nb} band(s), but the index's encoder takes {bands}-"
                                    "band cubes")
            img = np.transpose(cube, (1, 2, 0)).astype(np.float32)
        elif eight_bit:
            if nb not in (1, 3):
                raise DataFileError(f"{p}: an 8-bit FITS with {nb} planes; a colour query needs "
                                    "3 (red, green, blue) or 1 (grey)")
            img = np.transpose(cube if nb == 3 else np.repeat(cube, 3, 0), (1, 2, 0))
            if bands == 1:
                img = img[:, :, :1]
        else:
            spec_dict = qspec or h.get("normspec")
            if spec_dict is None:
                spec = NormSpec()
                notes.append(f"{p.name}: no NormSpec in the file or the index; the Lupton "
                             f"composite uses the defaults (Q={spec.q}, stretch={spec.stretch})")
            else:
                try:
                    spec = NormSpec.from_dict(spec_dict)
                except (TypeError, ValueError) as exc:
                    raise DataFileError(f"{p}: unusable NormSpec ({exc})") from exc
            if nb == len(spec.bands):
                planes = [cube[spec.bands.index(b)] for b in spec.rgb]
            elif nb == 3:
                planes = [cube[0], cube[1], cube[2]]
            elif nb == 1:
                planes = [cube[0]] * 3
                notes.append(f"{p.name}: one band only; a grey composite (colour is lost)")
            else:
                raise DataFileError(
                    f"{p}: {nb} bands; a colour query needs 1 band, 3 (red, green, blue) or the "
                    f"{len(spec.bands)} bands {''.join(spec.bands)} of the NormSpec")
            planes = [np.where(np.isfinite(x), x, 0.0).astype(np.float32) for x in planes]
            img = lupton_rgb(planes[0], planes[1], planes[2], spec)
            if bands == 1:
                img = img.mean(axis=2, keepdims=True).round().astype(np.uint8)
        # FITS arrays are bottom-up; pictures top-down
        return (img if bottom_up else img[::-1]), qdigest, notes

    def embed_files(self, paths: Sequence[str | Path]) -> list[QueryInput]:
        """Embed query files (loads the encoder, TensorFlow, on first use)."""
        if not paths:
            return []  # a search by object ids needs no encoder
        info = self.encoder_info()
        raws, metas = [], []
        for p in paths:
            raw, digest, notes = self.raw_query_image(p)
            raws.append(raw)
            metas.append((str(p), "fits" if _is_fits(Path(p)) else "png/jpeg", digest, notes))
        if not raws:
            return []
        from ssald_desktop.core.embeddings import embed_prepared

        x = prepare_images(raws, info.scaling, info.input_size)
        vec = l2_normalise(embed_prepared(self._model_for(), x))
        return [QueryInput(n, kind, v, d, notes)
                for (n, kind, d, notes), v in zip(metas, vec, strict=True)]

    def cutout_spec(self) -> Any:
        """The NormSpec to cut query cutouts with: the index's, else the default one."""
        from ssald_desktop.core.cutouts import NormSpec

        spec = self.header.get("normspec")
        return NormSpec.from_dict(spec) if spec else NormSpec()

    def embed_cutouts(self, cutouts: Sequence[Any]) -> list[QueryInput]:
        """Embed cutouts cut from a frame set at a position (:class:`Cutout`).

        Cut them with :meth:`cutout_spec`, e.g.
        ``CutoutEngine(frame_set, searcher.cutout_spec()).cut(coord)``.
        """
        if not cutouts:
            return []
        from ssald_desktop.core.embeddings import embed_prepared

        info = self.encoder_info()
        raws, metas = [], []
        for c in cutouts:
            name = f"cutout at RA {c.ra:.6f} Dec {c.dec:+.6f}"
            raw, digest, notes = self.raw_from_cube(np.asarray(c.data, np.float32),
                                                    c.spec.to_dict(), False, name)
            raws.append(raw)
            metas.append((name, "cutout", digest, notes))
        x = prepare_images(raws, info.scaling, info.input_size)
        vec = l2_normalise(embed_prepared(self._model_for(), x))
        return [QueryInput(n, kind, v, d, notes)
                for (n, kind, d, notes), v in zip(metas, vec, strict=True)]

    def embed_objects(self, ids: Sequence[str]) -> list[QueryInput]:
        """Stored vectors of indexed objects ("more like this"); no encoder needed."""
        return [QueryInput(str(i), "object", l2_normalise(self.store.vector(str(i)))[0],
                           self.store.normspec_digest) for i in ids]

    # -- search ------------------------------------------------------------------------------
    def search(self, files: Sequence[str | Path] = (), objects: Sequence[str] = (),
               negative_files: Sequence[str | Path] = (), negative_objects: Sequence[str] = (),
               k: int = 20, combine: str = "mean",
               negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
               cutouts: Sequence[Any] = (),
               negative_cutouts: Sequence[Any] = ()) -> SearchResult:
        """Search with positive examples (files and/or object ids) and optional negatives.

        Parameters
        ----------
        files, objects : sequence
            Positive examples: query files, indexed object ids.
        negative_files, negative_objects : sequence
            Negative examples.
        k : int
            Results wanted.
        combine : {"mean", "max"}
            How positives combine (module docstring).
        negative_weight : float
            ``w`` of the negative term.
        cutouts : sequence of Cutout
            Further positives: cutouts of a frame set at a position (see
            :meth:`embed_cutouts`).
        negative_cutouts : sequence of Cutout
            Further negatives, cut the same way.

        Returns
        -------
        SearchResult

        Raises
        ------
        InvalidQueryError
            No positive, an unknown object id, ``k`` larger than the index (less the excluded
            query objects), a NormSpec mismatch.
        DataFileError
            A query file that cannot be used (named).
        """
        if combine not in COMBINE:
            raise InvalidQueryError(f"combine must be one of {', '.join(COMBINE)}, got "
                                    f"{combine!r}")
        if not math.isfinite(negative_weight) or negative_weight < 0:
            raise InvalidQueryError(f"negative weight must be >= 0, got {negative_weight!r}")
        if not files and not objects and not cutouts:
            raise InvalidQueryError("give at least one query image or object id")
        n = self.index.count
        given = (self.store.row_of(str(o)) for o in list(objects) + list(negative_objects))
        # Only rows the index holds can appear in (and be excluded from) its results.
        excluded = {r for r in given if r is not None and r < n}
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
        if k + len(excluded) > n:
            less = (f", {len(excluded)} of them query objects excluded from the results"
                    if excluded else "")
            raise InvalidQueryError(f"k={k} is larger than the index at {self.index.path} "
                                    f"({n} vectors{less})")
        pos = self.embed_objects(objects) + self.embed_files(files) + self.embed_cutouts(cutouts)
        neg = (self.embed_objects(negative_objects) + self.embed_files(negative_files)
               + self.embed_cutouts(negative_cutouts))
        pool = k + len(excluded)
        if neg:
            pool = max(pool, 4 * k, k + 100)
        pool = min(pool, n)
        P = np.stack([q.vector for q in pos])
        if combine == "mean":
            q = l2_normalise(P.mean(axis=0))
            _, rows = self.index.search(q, pool)
            cand = np.array([r for r in rows[0] if r >= 0], np.int64)
        else:
            _, rows = self.index.search(P, pool)
            cand = np.unique(rows[rows >= 0])
            q = P
        cand = np.array([r for r in cand if int(r) not in excluded], np.int64)
        # similarities as the index measures them (whitened when it is; see core.index)
        unit = self.index.transform
        vecs = self.store.vectors()
        if len(cand):
            order = np.argsort(cand)
            X = np.empty((len(cand), self.index.dim), np.float32)
            X[order] = unit(np.asarray(vecs[cand[order]]))
        else:
            X = np.zeros((0, self.index.dim), np.float32)
        cos = (X @ unit(q).T).max(axis=1) if len(cand) else np.zeros(0, np.float32)
        score = cos.copy()
        if neg:
            N = unit(np.stack([x.vector for x in neg]))
            score = cos - float(negative_weight) * (X @ N.T).max(axis=1)
        top = np.argsort(-score, kind="stable")[:k]
        objs = {o["row"]: o for o in self.store.objects(cand[top])}
        hits = [Hit(rank=i + 1, id=objs[int(cand[t])]["id"], similarity=float(score[t]),
                    cosine=float(cos[t]), row=int(cand[t]), ra=objs[int(cand[t])]["ra"],
                    dec=objs[int(cand[t])]["dec"], source=objs[int(cand[t])]["source"])
                for i, t in enumerate(top)]
        info = {"folder": str(self.folder), "kind": self.index.kind, "count": n,
                "whitened": self.index.whitened,
                "params": self.index.params, "encoder_id": self.store.encoder_id,
                "normspec_digest": self.store.normspec_digest}
        return SearchResult(hits, int(k), combine, float(negative_weight), pos, neg, info)


def search(folder: str | Path, files: Sequence[str | Path] = (), objects: Sequence[str] = (),
           negative_files: Sequence[str | Path] = (), negative_objects: Sequence[str] = (),
           k: int = 20, combine: str = "mean",
           negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
           encoder: str | Path | None = None) -> SearchResult:
    """One-shot :meth:`Searcher.search` on the index in ``folder``."""
    return Searcher(folder, encoder).search(files, objects, negative_files, negative_objects, k,
                                            combine, negative_weight)
