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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.lines import SpectralEvidence, analyze_spectrum
from ssald_desktop.core.nuclei import (
    NucleiResult,
    PsfShape,
    find_nuclei,
    find_nuclei_in_field,
    load_image,
)

__all__ = ["Evidence", "EvidenceError", "gather_evidence"]


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
    """

    nuclei: NucleiResult | None = None
    spectrum: SpectralEvidence | None = None
    catalog_matches: list[dict[str, Any]] = field(default_factory=list)
    ra: float | None = None
    dec: float | None = None
    z: float | None = None
    nuclei_source: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

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
        }


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
    elif image is not None:
        ev.sources["image"] = str(image)
        pixels = load_image(image)
        ev.nuclei = find_nuclei(pixels, pixel_scale=pixel_scale, z=kpc_z)
        ev.nuclei_source = "image"
    if spec_obj is not None:
        ev.spectrum = analyze_spectrum(spec_obj, z if z is not None else None)
    return ev
