"""Known dual AGN: the shipped table, its derivation from the real catalogues, cross-matching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from ssald_desktop.cli import main as cli
from ssald_desktop.core.catalogs import (
    CatalogError,
    KnownDualAGN,
    crossmatch,
    crossmatch_table,
    default_catalog,
    known_dagn_path,
    read_positions,
    resources_dir,
)
from ssald_desktop.core.errors import DataFileError
from ssald_desktop.core.labels import LabelStore
from tests.conftest import DATA

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "resources" / "catalogs" / "derive_known_dagn.py"
GOTHIC = DATA / "catalogs" / "gothic" / "DERIVED_gothic_159_dual_agn_components.csv"


@pytest.fixture(scope="module")
def known():
    return default_catalog()


def _load_script():
    spec = importlib.util.spec_from_file_location("derive_known_dagn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resources_path_helper():
    assert resources_dir() == REPO / "resources"
    assert known_dagn_path() == REPO / "resources" / "catalogs" / "known_dagn.ecsv"
    assert known_dagn_path().is_file()
    readme = (known_dagn_path().parent / "README.md").read_text()
    for cite in ("Pfeifle", "arXiv:2411.12799", "2011ApJ...737..101L", "MNRAS 524", "4482"):
        assert cite in readme


@pytest.mark.timeout(120)
def test_shipped_table_is_what_the_script_derives(tmp_path):
    module = _load_script()
    derived, stats = module.derive(DATA)
    shipped = Table.read(known_dagn_path(), format="ascii.ecsv")
    assert derived.colnames == shipped.colnames and len(derived) == len(shipped)
    for name in derived.colnames:
        a, b = derived[name], shipped[name]
        if a.dtype.kind == "f":
            ma = np.ma.getmaskarray(a) | ~np.isfinite(np.ma.filled(a, np.nan))
            mb = np.ma.getmaskarray(b) | ~np.isfinite(np.ma.filled(b, np.nan))
            assert (ma == mb).all(), name
            np.testing.assert_array_equal(np.asarray(a)[~ma], np.asarray(b)[~mb], err_msg=name)
        else:
            assert (np.ma.getmaskarray(a) == np.ma.getmaskarray(b)).all(), name
            assert [str(x) for x in np.ma.filled(a)] == [str(x) for x in np.ma.filled(b)], name
    assert shipped.meta["counts"] == {k: v for k, v in stats.items() if k != "total"}
    # and the script writes the same bytes
    out = tmp_path / "known.ecsv"
    module.write(derived, out)
    assert out.read_bytes() == known_dagn_path().read_bytes()
    assert module.main(["--data", str(tmp_path / "nowhere")]) == 2  # no catalogs/: clear exit


def test_table_content(known):
    t = known.table
    catalog = list(t["catalog"])
    assert catalog.count("GOTHIC") == 159
    assert catalog.count("Liu+2011") >= 1284  # every mutual pair of the 2,618 AGN
    big = t[t["catalog"] == "Big MAC DR1"]
    assert 50 <= (big["status"] == "confirmed dual AGN").sum() <= 69
    assert set(t["status"]) == {"confirmed dual AGN", "dual AGN candidate", "AGN pair"}
    for c in ("ra1", "ra2"):
        v = np.ma.compressed(t[c])
        assert ((v >= 0) & (v < 360)).all()
    for c in ("dec1", "dec2"):
        assert (np.abs(np.ma.compressed(t[c])) <= 90).all()
    assert (np.ma.compressed(t["sep_arcsec"]) > 0).all()
    assert str(t["ra1"].unit) == "deg" and str(t["sep_kpc"].unit) == "kpc"


def test_liu_pairs_keep_spectrum_ids_and_true_separations(known):
    t = known.table
    liu = t[t["catalog"] == "Liu+2011"]
    first = liu[list(liu["name1"]).index("J000249.07+004504.8")]
    assert first["name2"] == "J000249.44+004506.7"
    assert (first["plate1"], first["mjd1"], first["fiber1"]) == (388, 51793, 345)
    assert (first["plate2"], first["mjd2"], first["fiber2"]) == (685, 52203, 593)
    assert first["sep_arcsec"] == pytest.approx(5.9, abs=0.1)  # the published 5.9"
    assert first["sep_kpc"] == pytest.approx(9.5, abs=0.2)  # the published rp
    # At Dec +63 the published sep (136.0") lacks cos(Dec); ours is the true separation.
    high = liu[list(liu["name1"]).index("J111438.38+632154.2")]
    assert high["sep_arcsec"] == pytest.approx(72.7, abs=0.1)


def test_gothic_and_bigmac_details(known):
    t = known.table
    g = t[t["catalog"] == "GOTHIC"]
    assert sorted(set(g["n_nuclei"])) == [2, 3, 4]
    assert not np.ma.getmaskarray(g["objid1"]).any()
    src = Table.read(GOTHIC, format="ascii.csv")
    assert set(int(x) for x in g["objid1"]) <= set(int(x) for x in src["obj ID"])
    assert np.ma.getmaskarray(g["ra2"]).sum() == 3  # components the authors gave no position
    b1950 = t[t["name"] == "0023+171"][0]  # component C was given in B1950: precessed
    assert abs(b1950["ra2"] - b1950["ra1"]) < 0.01 and abs(b1950["dec2"] - b1950["dec1"]) < 0.01
    mrk = t[t["name"] == "Mrk 266"][0]
    assert mrk["status"] == "confirmed dual AGN" and mrk["sep_arcsec"] == pytest.approx(10.2,
                                                                                        abs=0.2)


def test_crossmatch_a_known_dual_agn(known):
    # NGC 3758 = Mrk 739, the dual AGN of data/renders/gothic/ngc-3758.png
    matches = crossmatch(174.1222, 21.5961, 10.0)
    assert [m.name for m in matches] == ["Mrk 739"]
    m = matches[0]
    assert m.status == "confirmed dual AGN" and m.distance_arcsec < 1.0
    assert m.component == 2 and m.z == pytest.approx(0.0299, abs=1e-3)
    assert "Mrk 739" in m.summary() and "2011ApJ...735L..42K" in m.reference
    assert crossmatch(174.1222, 21.5961, 0.1) == []
    # one system reported once even when both nuclei lie inside the radius
    wide = crossmatch(174.1222, 21.5961, 30.0)
    assert [m.name for m in wide].count("Mrk 739") == 1
    assert [m.distance_arcsec for m in wide] == sorted(m.distance_arcsec for m in wide)


def test_crossmatch_every_gothic_component(known, tmp_path):
    src = Table.read(GOTHIC, format="ascii.csv")
    t = crossmatch_table(GOTHIC, 0.5)
    assert t.meta["inputs"] == len(src) and t.meta["skipped"] == 4
    g = t[t["catalog"] == "GOTHIC"]
    assert (g["distance_arcsec"] < 0.01).all()
    # every GOTHIC system is found from its own nuclei
    assert len(set(g["name"])) == 159
    assert "input_id" in t.colnames and str(g["input_id"][0]) in set(str(x) for x in
                                                                        src["obj ID"])
    # a label export (VOTable) cross-matches the same way
    with LabelStore(tmp_path / "l.sqlite") as store:
        for r in src[:20]:
            if not np.ma.is_masked(r["ra"]):
                store.add(str(r["obj ID"]), "DAGN candidate", ra=float(r["ra"]),
                          dec=float(r["dec"]))
        store.export(tmp_path / "labels.vot")
    lt = crossmatch_table(tmp_path / "labels.vot", 1.0)
    assert set(lt["catalog"]) >= {"GOTHIC"} and len(set(lt["input_id"])) >= 18


def test_bad_inputs_are_clear_errors(known, tmp_path):
    with pytest.raises(CatalogError, match="radius -1"):
        crossmatch(10, 10, -1)
    with pytest.raises(CatalogError, match="RA 400"):
        crossmatch(400, 0)
    with pytest.raises(CatalogError, match="Dec -91"):
        crossmatch(0, -91)
    with pytest.raises(CatalogError, match="not two numbers"):
        crossmatch("north", 0)
    bad = tmp_path / "pos.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(CatalogError, match=f"{bad}: no RA/Dec columns"):
        crossmatch_table(bad)
    with pytest.raises(CatalogError, match="no column 'alpha_j2000'"):
        read_positions(bad, ra_col="alpha_j2000")
    t, ra, dec, ident = read_positions(bad, ra_col="x", dec_col="y")
    assert (ra, dec, ident) == ("x", "y", None)
    with pytest.raises(CatalogError, match="no such file"):
        crossmatch_table(tmp_path / "missing.csv")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not fits at all" * 10)
    with pytest.raises(CatalogError, match="junk.fits: not a table"):
        crossmatch_table(junk)
    with pytest.raises(DataFileError, match="no known dual-AGN table"):
        KnownDualAGN(tmp_path / "none.ecsv")
    with pytest.raises(CatalogError, match="lacks the columns"):
        KnownDualAGN(Table({"name": ["a"]}))


def test_cli_crossmatch(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cli(["crossmatch", "--ra", "174.1222", "--dec", "21.5961", "--radius", "10",
                "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Mrk 739" in text and "confirmed dual AGN" in text
    data = json.loads(out.read_text())
    assert data["matches"][0]["name"] == "Mrk 739"
    assert cli(["crossmatch", "--table", str(GOTHIC), "--radius", "0.5", "--limit", "2",
                "--out", str(tmp_path / "m.fits"), "--json", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    assert "of 328 rows" in text and "more" in text
    assert len(Table.read(tmp_path / "m.fits")) == len(json.loads(
        (tmp_path / "t.json").read_text())["matches"]) > 159
    assert cli(["crossmatch", "--ra", "1"]) == 2
    assert "give --ra and --dec" in capsys.readouterr().err


def test_matches_carry_the_components_sdss_spectra():
    """Issue 9 item 5: a matched system's SDSS spectrum identifiers reach the card."""
    from ssald_desktop.core.catalogs import default_catalog

    cat = default_catalog()
    t = cat.table
    i = next(i for i in range(len(t)) if str(t["catalog"][i]) == "Liu+2011")
    row = t[i]
    matches = cat.match(float(row["ra1"]), float(row["dec1"]), 1.0)
    liu = next(m for m in matches if m.catalog == "Liu+2011")
    expected = f"{int(row['plate1'])}-{int(row['mjd1'])}-{int(row['fiber1'])}"
    assert expected in liu.spectra and len(liu.spectra) == 2
    assert expected in liu.summary()
