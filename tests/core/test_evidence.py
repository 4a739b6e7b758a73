"""Combined evidence for one object, and the ``ssald-cli evidence`` command."""

from __future__ import annotations

import json
import math

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


# Issue 9: a star beyond a galaxy is a second PSF in one band; the field catalogue tells.
# Galaxies of 2820-3-122 by their ids in the sample index (resources/sample/index): 643 has a
# red point-like star 7.3 arcsec beyond its inclined disk; 646 and 647 are a galaxy and its
# compact neighbour 5.6 arcsec apart, which the catalogue classifies as a galaxy.
G643 = (38.3594017706753, -0.0864585875655976)
G646 = (38.3695564998312, -0.0344410100065178)
G647 = (38.3710917873073, -0.034458293425708)
PSF = PsfShape(1.2, 2.0, 0.25, "given")


@pytest.fixture(scope="module")
def field_table(quiet_field):
    from ssald_desktop.core.evidence import field_sources

    return field_sources(quiet_field)


def _nearest(table, ra, dec):
    import numpy as np

    d = 3600 * np.hypot((np.asarray(table["ra"]) - ra) * np.cos(np.radians(dec)),
                        np.asarray(table["dec"]) - dec)  # fmt: skip
    i = int(np.argmin(d))
    return table[i], float(d[i])


def test_star_beyond_the_disk_is_not_a_second_nucleus(quiet_field, field_table):
    from ssald_desktop.core.nuclei import find_nuclei_in_field

    # without the catalogue: the old answer, a pair with the star as the second nucleus
    plain = gather_evidence(frame_set=quiet_field, ra=G643[0], dec=G643[1], psf=PSF,
                            check_stars=False)  # fmt: skip
    direct = find_nuclei_in_field(quiet_field, *G643, psf=PSF)
    assert plain.two_nuclei and direct.is_pair
    assert plain.nuclei.message == direct.message
    assert plain.stars == [] and plain.star_check is None
    assert plain.nuclei.separation_arcsec == pytest.approx(7.3, abs=0.3)

    ev = gather_evidence(frame_set=quiet_field, ra=G643[0], dec=G643[1], psf=PSF,
                         sources=field_table)  # fmt: skip
    assert not ev.two_nuclei and ev.nuclei.status == "single"
    assert "second peak is a star (field catalogue, concentration C=" in ev.nuclei.message
    assert "second peak is a star" in ev.star_check and "star" in ev.summary
    assert ev.sources["catalogue"] == "given"
    (star,) = ev.stars
    row, d = _nearest(field_table, star["ra"], star["dec"])
    assert d < 0.01 and bool(row["is_star"]) and not bool(row["is_galaxy"])
    assert star["sep_arcsec"] < 1.0 and star["concentration"] == pytest.approx(
        float(row["concentration"]))
    assert f"{star['ra']:.5f}" in ev.nuclei.message
    # the remaining nucleus is the galaxy's, the star stays drawn as the candidate
    (n,) = ev.nuclei.nuclei
    assert _nearest(field_table, n.ra, n.dec)[1] < 1.0
    assert abs(n.ra - G643[0]) * 3600 < 1.5 and abs(n.dec - G643[1]) * 3600 < 1.5
    c = ev.nuclei.candidate
    assert abs(c.ra - star["ra"]) * 3600 < 1.0 and abs(c.dec - star["dec"]) * 3600 < 1.0
    d = ev.to_dict()
    text = json.dumps(d)
    assert "NaN" not in text and d["stars"][0]["catalogue_id"] == int(row["id"])
    assert d["two_nuclei"] is False and d["nuclei"]["status"] == "single"


@pytest.mark.parametrize("pos", [G646, G647])
def test_companion_galaxy_stays_a_pair(quiet_field, field_table, pos):
    ev = gather_evidence(frame_set=quiet_field, ra=pos[0], dec=pos[1], psf=PSF,
                         sources=field_table)  # fmt: skip
    assert ev.two_nuclei, ev.nuclei.message
    assert ev.nuclei.separation_arcsec == pytest.approx(5.6, abs=0.3)
    assert ev.stars == [] and "is a galaxy in the field catalogue" in ev.star_check
    # the second nucleus is the other galaxy of the system, not the one asked about
    other = G647 if pos == G646 else G646
    second = max(ev.nuclei.nuclei, key=lambda n: math.hypot(n.ra - pos[0], n.dec - pos[1]))
    assert math.hypot(second.ra - other[0], second.dec - other[1]) * 3600 < 1.0


def test_field_catalogue_is_detected_once_and_checked(quiet_field, field_table):
    import numpy as np

    from ssald_desktop.core.evidence import check_star_neighbour, field_sources
    from ssald_desktop.core.frames import FrameSet

    # the same frames (e.g. the GUI's g/r/i subset of the field) reuse the catalogue
    some = FrameSet({b: quiet_field[b] for b in ("g", "r", "i")})
    assert field_sources(some) is field_table
    ev = gather_evidence(frame_set=some, ra=G643[0], dec=G643[1], psf=PSF)
    assert ev.nuclei.status == "single" and len(ev.stars) == 1
    assert ev.sources["catalogue"] == "detect_galaxies (r band)"
    # a single galaxy is not checked; a table without the classification is refused
    single = gather_evidence(frame_set=quiet_field, ra=GALAXY[0], dec=GALAXY[1], psf=PSF,
                             sources=field_table[:0])  # fmt: skip
    assert single.star_check is None and single.stars == []
    pair = gather_evidence(frame_set=quiet_field, ra=G643[0], dec=G643[1], psf=PSF,
                           check_stars=False).nuclei  # fmt: skip
    with pytest.raises(EvidenceError, match="is_star"):
        check_star_neighbour(pair, field_table["ra", "dec", "concentration"], *G643)
    same, star, note = check_star_neighbour(pair, field_table[:0], *G643)
    assert same is pair and star is None and "empty" in note
    # a catalogue that does not separate the two nuclei (here: the galaxy's own entry left
    # out and a match radius beyond the separation) gives no verdict
    galaxy_row = _nearest(field_table, *G643)[0]
    others = field_table[np.asarray(field_table["id"]) != galaxy_row["id"]]
    same, star, note = check_star_neighbour(pair, others, *G643, match_arcsec=9.0)
    assert same is pair and star is None and "not a separate source" in note


def test_cli_evidence_names_the_star(capsys, field_table):
    from ssald_desktop.cli import main

    assert main(["evidence", "--field", str(QUIET_FIELD), "--ra", str(G643[0]), "--dec",
                 str(G643[1]), "--seeing", "1.2"]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)
    assert d["nuclei"]["status"] == "single" and not d["two_nuclei"]
    assert len(d["stars"]) == 1 and "star" in d["nuclei"]["message"]
