"""One object's combined dual-AGN evidence: nuclei in the image and AGN signs in the spectrum.

An astronomer confirms a dual AGN from two independent pieces of evidence (e.g. Comerford et
al. 2012, ApJ 753, 42; Bhattacharya et al. 2023, MNRAS 524, 4482): two nuclei resolved in the
image, and AGN signatures in the spectrum, double-peaked narrow lines or AGN-like line ratios
on the BPT diagram. :func:`gather_evidence` collects both for one object from whatever is at
hand: a frame set and a position (the calibrated r band, :func:`~ssald_desktop.core.nuclei.
find_nuclei_in_field`), an image file (a PNG/JPEG render or a FITS image,
:func:`~ssald_desktop.core.nuclei.find_nuclei`), and/or a spectrum file
(:func:`~ssald_desktop.core.lines.analyze_spectrum`). Everything is plain data with
``to_dict()`` so that the review card can draw it: nuclei positions in the cutout's pixels, the
fitted [OIII] curves and the BPT point.

Catalogue matches are filled by the caller (``catalog_matches``; the bundled dual-AGN tables
are cross-matched in :mod:`ssald_desktop.core.catalogs`).

Stars taken for a second nucleus
--------------------------------
In one band an unresolved source beyond the host, a foreground star, looks exactly like a bare
second nucleus: both are PSF-shaped, and the point-source test of
:func:`~ssald_desktop.core.nuclei.find_nuclei` can only turn down *resolved* components. On a
field the frame's own source catalogue settles it (:func:`check_star_neighbour`): the star/galaxy
separation of :func:`~ssald_desktop.core.sources.detect_galaxies` measures each source's
concentration ``m(0.75 FWHM) - m(3 FWHM)`` against the stellar locus of the frame (the SDSS
``psfMag - cModelMag`` idea, Stoughton et al. 2002), using the whole profile out to 3 FWHM rather
than the few pixels a nucleus fit sees. When the second nucleus of a pair (the one farther from
the position asked about) lies within ``max(1 arcsec, PSF FWHM)`` of a catalogue source, and
that nearest source is classified ``is_star``, the answer becomes "single" and the star is kept
in :attr:`Evidence.stars`. The catalogue is the caller's (the GUI's galaxy detection), else
detected once per field and band and kept for the session.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.lines import SpectralEvidence, analyze_spectrum
from ssald_desktop.core.nuclei import (
    NucleiResult,
    PsfShape,
    find_nuclei,
    find_nuclei_in_field,
    load_image,
)

__all__ = [
    "Evidence",
    "EvidenceError",
    "STAR_MATCH_ARCSEC",
    "check_star_neighbour",
    "field_sources",
    "gather_evidence",
]

#: Smallest radius (arcsec) within which a nucleus and a catalogue source are the same object;
#: the PSF FWHM is used when larger.
STAR_MATCH_ARCSEC = 1.0

#: Field catalogues kept in this process (most recently used fields).
_CACHE_SIZE = 4


class EvidenceError(SsaldError):
    """Nothing to gather evidence from, or inconsistent inputs."""


@dataclass
class Evidence:
    """Combined evidence for one object.

    Attributes
    ----------
    nuclei : NucleiResult or None
        From the frame set (``nuclei_source`` ``"field"``) or the image file (``"image"``).
    spectrum : SpectralEvidence or None
        Line fits, the double-peak tests and the BPT class.
    catalog_matches : list of dict
        Known systems matched by the caller (empty when none or not checked).
    ra, dec, z : float or None
        Position and the redshift used (given, else the spectrum's).
    sources : dict
        The files and field used.
    stars : list of dict
        Catalogue stars that the image fit took for a second nucleus (``ra``, ``dec``,
        ``sep_arcsec`` from that nucleus, ``concentration``, ``locus``, ``locus_offset``,
        ``mag``, ``snr``, ``catalogue_id``), kept so that the astronomer still sees them.
    star_check : str or None
        What the field catalogue said about the second nucleus of a pair (None when there was
        no pair on a field to check).
    """

    nuclei: NucleiResult | None = None
    spectrum: SpectralEvidence | None = None
    catalog_matches: list[dict[str, Any]] = field(default_factory=list)
    ra: float | None = None
    dec: float | None = None
    z: float | None = None
    nuclei_source: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    stars: list[dict[str, Any]] = field(default_factory=list)
    star_check: str | None = None

    @property
    def two_nuclei(self) -> bool:
        """Two nuclei found in the image."""
        return self.nuclei is not None and self.nuclei.is_pair

    @property
    def double_peaked(self) -> bool:
        """[OIII] 5007 or H-alpha+[NII] double-peaked."""
        sp = self.spectrum
        if sp is None:
            return False
        return any(t is not None and t.double_peaked for t in (sp.oiii, sp.halpha))

    @property
    def agn_bpt(self) -> bool:
        """The BPT class (fit, else SPZLINE) is Seyfert, LINER or AGN."""
        sp = self.spectrum
        if sp is None:
            return False
        for bpt in (sp.bpt, sp.bpt_spzline):
            if bpt is not None and bpt.status == "classified":
                return bpt.is_agn
        return False

    @property
    def summary(self) -> str:
        """One line for the astronomer."""
        parts = []
        if self.nuclei is not None:
            parts.append(f"image: {self.nuclei.message}")
        if self.spectrum is not None:
            parts.append(f"spectrum: {self.spectrum.message}")
        if self.catalog_matches:
            parts.append(f"{len(self.catalog_matches)} catalogue match(es)")
        return "; ".join(parts) if parts else "no evidence gathered"

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """Plain-Python dictionary for JSON and the review card."""

        def jf(v: Any) -> Any:
            return None if v is None or not math.isfinite(float(v)) else float(v)

        return {
            "ra": jf(self.ra),
            "dec": jf(self.dec),
            "z": jf(self.z),
            "summary": self.summary,
            "two_nuclei": self.two_nuclei,
            "double_peaked": self.double_peaked,
            "agn_bpt": self.agn_bpt,
            "nuclei_source": self.nuclei_source,
            "nuclei": None if self.nuclei is None else self.nuclei.to_dict(),
            "spectrum": None if self.spectrum is None else self.spectrum.to_dict(curves),
            "catalog_matches": list(self.catalog_matches),
            "sources": dict(self.sources),
            "stars": [{k: (jf(v) if isinstance(v, float) else v) for k, v in st.items()}
                      for st in self.stars],
            "star_check": self.star_check,
        }


_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()


def _catalogue_band(frame_set: Any) -> str:
    bands = getattr(frame_set, "frames", None) or {}
    return "r" if "r" in bands else str(getattr(frame_set, "reference_band", "r"))


def field_sources(frame_set: Any, band: str | None = None) -> Any:
    """The field's source catalogue (:func:`~ssald_desktop.core.sources.detect_galaxies`).

    Detected once per frame file and band and kept in this process (the last few fields), so
    that looking at several galaxies of one field detects its sources once (about 5 s for a
    2048 x 1489 SDSS frame).

    Parameters
    ----------
    frame_set : FrameSet
        The field.
    band : str, optional
        Detection band; default r when the field has it, else the reference band.

    Returns
    -------
    astropy.table.Table
        With ``ra``, ``dec``, ``is_star``, ``concentration``, ``locus_offset`` among others.

    Raises
    ------
    SsaldError
        From the detection (e.g. a band the field does not have).
    """
    from ssald_desktop.core.sources import detect_galaxies

    band = band or _catalogue_band(frame_set)
    frames = getattr(frame_set, "frames", None) or {}
    path = getattr(frames.get(band), "path", None)
    key = None if path is None else (str(path), band)
    if key is not None:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
    table = detect_galaxies(frame_set, band)
    if key is not None:
        with _cache_lock:
            _cache[key] = table
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return table


_NEEDED = ("ra", "dec", "is_star", "concentration")


def _star_record(row: Any, sep_arcsec: float) -> dict[str, Any]:
    def num(name: str) -> float | None:
        if name not in row.colnames:
            return None
        v = float(row[name])
        return v if math.isfinite(v) else None

    conc, offset = num("concentration"), num("locus_offset")
    mag = next((num(c) for c in row.colnames if c.startswith("mag_") and not c.endswith("_err")),
               None)  # fmt: skip
    return {
        "ra": float(row["ra"]),
        "dec": float(row["dec"]),
        "sep_arcsec": float(sep_arcsec),
        "concentration": conc,
        "locus": None if conc is None or offset is None else conc - offset,
        "locus_offset": offset,
        "mag": mag,
        "snr": num("snr"),
        "catalogue_id": int(row["id"]) if "id" in row.colnames else None,
    }


def check_star_neighbour(
    result: NucleiResult, sources: Any, ra: float, dec: float,
    match_arcsec: float | None = None,
) -> tuple[NucleiResult, dict[str, Any] | None, str | None]:
    """Turn a pair whose second nucleus is a catalogue star into one nucleus.

    The second nucleus is the one farther from (``ra``, ``dec``), the object asked about. It
    is matched to the nearest source of ``sources`` within ``match_arcsec`` (default the
    larger of :data:`STAR_MATCH_ARCSEC` and the PSF FWHM); when that source is not also the
    first nucleus's (a pair closer than the catalogue's deblending) and is ``is_star``
    (concentration on the stellar locus of the frame,
    :func:`~ssald_desktop.core.sources.detect_galaxies`), the result becomes ``"single"`` with
    the galaxy's nucleus (its flux from the pair fit, which models the star apart) and the
    star as the candidate.

    Parameters
    ----------
    result : NucleiResult
        From :func:`~ssald_desktop.core.nuclei.find_nuclei_in_field` (nuclei with RA/Dec).
    sources : astropy.table.Table
        The field's catalogue with ``ra``, ``dec``, ``is_star``, ``concentration`` (and
        optionally ``locus_offset``, ``snr``, ``mag_*``, ``id``).
    ra, dec : float
        The object asked about (deg).
    match_arcsec : float, optional
        Match radius.

    Returns
    -------
    result : NucleiResult
        ``result`` itself unless the second nucleus is a star.
    star : dict or None
        The star (see :attr:`Evidence.stars`).
    note : str or None
        What the catalogue said; None when ``result`` is not a pair.

    Raises
    ------
    EvidenceError
        ``sources`` lacks a needed column.
    """
    if not result.is_pair or len(result.nuclei) < 2:
        return result, None, None
    names = list(getattr(sources, "colnames", []))
    missing = [c for c in _NEEDED if c not in names]
    if missing:
        raise EvidenceError(
            f"source catalogue has no column(s) {', '.join(missing)} (columns: "
            f"{', '.join(names) or 'none'}); give the table of detect_galaxies"
        )
    if any(n.ra is None or n.dec is None for n in result.nuclei[:2]):
        return result, None, "nuclei have no sky positions to match to the field catalogue"

    def arcsec(ra1: Any, dec1: Any, ra2: float, dec2: float) -> Any:
        dra = (np.asarray(ra1, float) - ra2 + 180.0) % 360.0 - 180.0
        return 3600.0 * np.hypot(dra * math.cos(math.radians(dec2)), np.asarray(dec1) - dec2)

    first, second = sorted(result.nuclei[:2], key=lambda n: float(arcsec(n.ra, n.dec, ra, dec)))
    assert first.ra is not None and first.dec is not None  # checked above (for mypy)
    assert second.ra is not None and second.dec is not None
    if match_arcsec is None:
        match_arcsec = max(STAR_MATCH_ARCSEC, result.psf_fwhm_arcsec or 0.0)
    if len(sources) == 0:
        return result, None, "field catalogue is empty"
    d = arcsec(sources["ra"], sources["dec"], second.ra, second.dec)
    i = int(np.nanargmin(d))
    where = f"RA/Dec {second.ra:.5f} {second.dec:+.5f}"
    if not d[i] <= match_arcsec:
        return result, None, f"second nucleus ({where}) has no field-catalogue source within " \
            f"{match_arcsec:.1f} arcsec"
    row = sources[i]
    d1 = arcsec(sources["ra"], sources["dec"], first.ra, first.dec)
    if int(np.nanargmin(d1)) == i and d1[i] <= match_arcsec:
        ident = f" {int(row['id'])}" if "id" in names else ""
        return result, None, f"second nucleus ({where}) is not a separate source in the field " \
            f"catalogue (both nuclei lie in source{ident})"
    if not bool(row["is_star"]):
        kind = "a galaxy" if "is_galaxy" in names and bool(row["is_galaxy"]) else "not a star"
        return result, None, f"second nucleus ({where}) is {kind} in the field catalogue " \
            f"(concentration C={float(row['concentration']):.2f})"
    star = _star_record(row, float(d[i]))
    locus = "" if star["locus"] is None else f", stellar locus {star['locus']:.2f}"
    why = (f"second peak is a star (field catalogue, concentration "
           f"C={star['concentration']:.2f}{locus}, at RA/Dec {star['ra']:.5f} "
           f"{star['dec']:+.5f})")  # fmt: skip
    sep = "" if result.separation_arcsec is None else f", {result.separation_arcsec:.1f} arcsec"
    single = replace(
        result,
        status="single",
        message=f"one nucleus; the {why}{sep} away",
        nuclei=[first],
        candidate=second,
    )
    return single, star, why


def gather_evidence(
    *,
    image: str | Path | None = None,
    spectrum: str | Path | Any | None = None,
    frame_set: Any = None,
    ra: float | None = None,
    dec: float | None = None,
    z: float | None = None,
    pixel_scale: float | None = None,
    psf: PsfShape | None = None,
    catalog_matches: list[dict[str, Any]] | None = None,
    sources: Any = None,
    check_stars: bool = True,
) -> Evidence:
    """Gather the nuclei and spectral evidence of one object.

    Parameters
    ----------
    image : path, optional
        A PNG/JPEG render (its luminance) or a FITS image. Used for the nuclei when no frame
        set is given. A render has no WCS: give ``pixel_scale`` (arcsec/px) for arcsec.
    spectrum : path or Spectrum, optional
        An SDSS spectrum file (or one already read).
    frame_set : FrameSet, optional
        A field; with ``ra``/``dec`` the r band there is searched for nuclei.
    ra, dec : float, optional
        Position (deg); needed with ``frame_set``. Default the spectrum's fibre position.
    z : float, optional
        Redshift for kpc and the line fits; default the spectrum's.
    pixel_scale : float, optional
        Arcsec per pixel of ``image``.
    psf : PsfShape, optional
        The PSF for the frame set (default psField's, else 1.4 arcsec).
    catalog_matches : list of dict, optional
        Known systems matched by the caller.
    sources : astropy.table.Table, optional
        The field's source catalogue (:func:`~ssald_desktop.core.sources.detect_galaxies`),
        used to tell a star from a second nucleus (:func:`check_star_neighbour`); detected
        here (once per field, :func:`field_sources`) when a field gives a pair and none is
        given.
    check_stars : bool
        Check the second nucleus of a field pair against the catalogue (default True).

    Returns
    -------
    Evidence

    Raises
    ------
    EvidenceError
        Nothing given, or a frame set without a position.
    SsaldError
        An unreadable file (from the readers), a position outside the field.
    """
    if image is None and spectrum is None and frame_set is None:
        raise EvidenceError("give an image, a spectrum, or a field with a position")
    ev = Evidence(catalog_matches=list(catalog_matches or []), ra=ra, dec=dec)
    spec_obj = None
    if spectrum is not None:
        if isinstance(spectrum, str | Path):
            from ssald_desktop.core.spectra import read_spectrum

            ev.sources["spectrum"] = str(spectrum)
            spec_obj = read_spectrum(spectrum)
        else:
            spec_obj = spectrum
            ev.sources["spectrum"] = str(getattr(spectrum, "path", "spectrum"))
        if ev.ra is None and spec_obj.ra is not None and spec_obj.dec is not None:
            ev.ra, ev.dec = spec_obj.ra, spec_obj.dec
    ev.z = z if z is not None else (None if spec_obj is None else spec_obj.z)
    if ev.z is not None and not math.isfinite(ev.z):
        ev.z = None
    kpc_z = ev.z if ev.z is not None and ev.z > 0 else None

    if frame_set is not None:
        if ev.ra is None or ev.dec is None:
            raise EvidenceError(
                f"field {getattr(frame_set, 'field_id', '')}: give --ra and --dec (or a spectrum "
                "with a fibre position) to search it for nuclei"
            )
        ev.sources["field"] = str(getattr(frame_set, "field_id", ""))
        ev.nuclei = find_nuclei_in_field(frame_set, ev.ra, ev.dec, z=kpc_z, psf=psf)
        ev.nuclei_source = "field"
        if check_stars and ev.nuclei.is_pair:
            _check_stars(ev, frame_set, sources)
    elif image is not None:
        ev.sources["image"] = str(image)
        pixels = load_image(image)
        ev.nuclei = find_nuclei(pixels, pixel_scale=pixel_scale, z=kpc_z)
        ev.nuclei_source = "image"
    if spec_obj is not None:
        ev.spectrum = analyze_spectrum(spec_obj, z if z is not None else None)
    return ev


def _check_stars(ev: Evidence, frame_set: Any, sources: Any) -> None:
    """Apply :func:`check_star_neighbour` to a field pair, detecting the catalogue if needed."""
    assert ev.nuclei is not None and ev.ra is not None and ev.dec is not None
    if sources is None:
        try:
            sources = field_sources(frame_set)
        except SsaldError as exc:
            ev.star_check = f"field catalogue unavailable: {exc}"
            return
        ev.sources["catalogue"] = f"detect_galaxies ({_catalogue_band(frame_set)} band)"
    else:
        ev.sources["catalogue"] = "given"
    ev.nuclei, star, ev.star_check = check_star_neighbour(ev.nuclei, sources, ev.ra, ev.dec)
    if star is not None:
        ev.stars.append(star)
