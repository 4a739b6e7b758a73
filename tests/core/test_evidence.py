"""Combined evidence for one object, and the ``ssald-cli evidence`` command."""

from __future__ import annotations

import json

import pytest

from ssald_desktop.core.evidence import EvidenceError, gather_evidence
from ssald_desktop.core.nuclei import PsfShape
from tests.conftest import DATA, QUIET_FIELD

RENDER = DATA / "renders" / "gothic" / "ngc-3758.png"
SPECTRA = DATA / "sdss" / "spectra"
# A galaxy of the quiet field 2820-3-122 (r ~ 18.7, S/N 59 in detect_galaxies).
GALAXY = (38.37106833413834, -0.17935816808381969)


def test_render_and_spectrum_together():
    ev = gather_evidence(image=RENDER, spectrum=SPECTRA / "spec-0266-51602-0001.fits",
                         pixel_scale=0.15)  # fmt: skip
    assert ev.nuclei_source == "image"
    assert ev.two_nuclei
    assert ev.z == pytest.approx(0.02128, abs=1e-4)  # the spectrum's redshift
    assert ev.nuclei.separation_kpc is not None
    assert ev.agn_bpt  # SPZLINE and the fit both call it an AGN
    d = ev.to_dict()
    text = json.dumps(d)
    assert d["spectrum"]["oiii_curve"]["components"]
    assert d["nuclei"]["nuclei"][0]["x"] > 0
    assert "NaN" not in text


def test_field_position(quiet_field):
    ev = gather_evidence(frame_set=quiet_field, ra=GALAXY[0], dec=GALAXY[1], z=0.1,
                         psf=PsfShape(1.2, 2.0, 0.25, "given"))  # fmt: skip
    assert ev.nuclei_source == "field"
    assert ev.nuclei.measurable
    assert ev.nuclei.pixel_scale == pytest.approx(0.396, abs=0.002)
    n = ev.nuclei.nuclei[0]
    assert n.ra == pytest.approx(GALAXY[0], abs=2 / 3600)
    assert n.dec == pytest.approx(GALAXY[1], abs=2 / 3600)
    assert ev.spectrum is None
    assert ev.nuclei.psf_source == "given"
    # the card's north-up cutout: the nucleus lands at its centre
    from astropy.coordinates import SkyCoord

    from ssald_desktop.core.cutouts import CutoutEngine

    card = CutoutEngine(quiet_field).cut(SkyCoord(GALAXY[0], GALAXY[1], unit="deg"))
    (x, y), = ev.nuclei.positions_in(card.wcs)[:1]
    assert abs(x - 31.5) < 2.5 and abs(y - 31.5) < 2.5


def test_bad_inputs():
    with pytest.raises(EvidenceError, match="give an image"):
        gather_evidence()
    ev = gather_evidence(spectrum=SPECTRA / "spec-5290-55862-0984.fits")
    assert ev.nuclei is None
    assert ev.spectrum.status == "not measurable"
    assert not ev.double_peaked and not ev.agn_bpt
    assert ev.catalog_matches == []
    ev = gather_evidence(spectrum=SPECTRA / "spec-3126-54804-0211.fits",
                         catalog_matches=[{"name": "test", "sep_arcsec": 0.5}])  # fmt: skip
    assert "star" in ev.summary
    assert ev.to_dict()["catalog_matches"] == [{"name": "test", "sep_arcsec": 0.5}]


def test_cli_evidence_render(tmp_path, capsys):
    from ssald_desktop.cli import main

    out = tmp_path / "ev.json"
    assert main(["evidence", str(RENDER), "--scale", "0.15", "--z", "0.0297",
                 "--json", str(out)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed == saved
    assert saved["two_nuclei"] and saved["nuclei"]["separation_kpc"] > 0


def test_cli_evidence_spectrum_file_and_field(tmp_path, capsys):
    from ssald_desktop.cli import main

    spec = SPECTRA / "spec-5290-55862-0984.fits"
    assert main(["evidence", str(spec)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["spectrum"]["status"] == "not measurable"
    assert "outside the spectrum" in d["spectrum"]["oiii_test"]["message"]
    assert main(["evidence", "--field", str(QUIET_FIELD), "--ra", str(GALAXY[0]), "--dec",
                 str(GALAXY[1]), "--seeing", "1.2"]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)
    assert d["nuclei_source"] == "field" and d["psf"]["source"] == "given"


def test_cli_evidence_errors(tmp_path, capsys):
    from ssald_desktop.cli import main

    assert main(["evidence", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["evidence", "--field", str(QUIET_FIELD), "--ra", "38.3"]) == 2
    assert "--dec" in capsys.readouterr().err
    assert main(["evidence", "--ra", "38.3", "--dec", "0.1"]) == 2
    assert "--field" in capsys.readouterr().err


def test_position_outside_the_field(quiet_field):
    from ssald_desktop.core.errors import OutsideFieldError

    with pytest.raises(OutsideFieldError, match="outside"):
        gather_evidence(frame_set=quiet_field, ra=10.0, dec=10.0)
    with pytest.raises(EvidenceError, match="--ra"):
        gather_evidence(frame_set=quiet_field)
