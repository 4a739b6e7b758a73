"""Tests of ssald_desktop.core.sky and ``ssald-cli fetch-field``, without the network.

The SDSS is replaced the way astroquery's own tests do it (astroquery/sdss/tests/test_sdss.py):
``astroquery.sdss.SDSS._request`` is monkeypatched to return
``astroquery.utils.mocks.MockResponse`` objects holding recorded real answers (the cone-search
tables of astroquery 0.4.11's tests) and real SDSS files (the frames of field 2820-3-122 and
real spec files), byte for byte as the archive serves them. A silent server is a real TCP
socket on 127.0.0.1 that accepts connections and never answers.
"""

from __future__ import annotations

import bz2
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astroquery import sdss as aq_sdss
from astroquery.utils.mocks import MockResponse

from ssald_desktop import cli
from ssald_desktop.core import sky
from ssald_desktop.core.errors import InvalidQueryError, OutsideFieldError, RemoteError
from ssald_desktop.core.frames import BANDS, FieldId, open_frame_set
from tests.conftest import DATA as SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
DATA = SHARED_DATA / "sdss"
FIELD_DIR = DATA / "frames" / "2820-3-122"
OTHER_FIELD_DIR = DATA / "frames" / "2583-2-136"
SPECTRA = DATA / "spectra"
XID_IM = DATA / "astroquery" / "xid_im.txt"
XID_SP = DATA / "astroquery" / "xid_sp.txt"

pytestmark = pytest.mark.skipif(not FIELD_DIR.is_dir(), reason=f"shared data missing: {DATA}")

#: A position inside field 2820-3-122 (footprint RA 38.249..38.412, Dec -0.220..+0.006).
INSIDE = "38.33 -0.107"


class FakeSDSS:
    """A stand-in for ``SDSS._request`` that serves recorded answers and real files."""

    def __init__(
        self,
        *,
        xid: bytes | None = None,
        specobj: bytes | None = None,
        files: dict[str, Path] | None = None,
    ) -> None:
        self.xid = xid if xid is not None else XID_IM.read_bytes()
        self.specobj = specobj
        self.files = dict(files or {})
        self.calls: list[tuple[str, str, dict]] = []

    @property
    def downloads(self) -> list[str]:
        return [url for _, url, _ in self.calls if url.startswith(aq_sdss.conf.sas_baseurl)]

    @property
    def queries(self) -> list[tuple[str, str, dict]]:
        return [c for c in self.calls if not c[1].startswith(aq_sdss.conf.sas_baseurl)]

    def __call__(self, method, url, **kwargs):
        self.calls.append((method, url, kwargs))
        if "data" in kwargs and kwargs["data"] and "uquery" in kwargs["data"]:
            return MockResponse(content=self.xid, url=url)  # cone search (CrossID)
        cmd = (kwargs.get("params") or {}).get("cmd", "")
        if "fDocColumns" in cmd:
            # astroquery's field-name look-up: a non-JSON mock answer makes it use its
            # built-in DR12 field lists, as in astroquery's own tests.
            return MockResponse(content=self.xid, url=url)
        if "SpecObjAll" in cmd:
            return MockResponse(content=self.specobj, url=url)
        name = url.rsplit("/", 1)[-1]
        if name in self.files:
            content = self.files[name].read_bytes()
            return MockResponse(
                content=content, url=url, headers={"Content-Length": str(len(content))}
            )
        return MockResponse(content=b"<html>Not Found</html>", url=url, status_code=404)


def frame_files(folder: Path = FIELD_DIR) -> dict[str, Path]:
    return {p.name: p for p in folder.glob("frame-*.fits.bz2")}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No network for names, astroquery's state and caches kept, no proxy for 127.0.0.1."""
    from astropy.coordinates.name_resolve import NameResolveError
    from astroquery import cache_conf

    def unknown_name(cls, name, **kw):  # Sesame, offline: knows no name
        raise NameResolveError(f"Unable to find coordinates for name '{name}' using http://x")

    monkeypatch.setattr(SkyCoord, "from_name", classmethod(unknown_name))
    monkeypatch.setattr(aq_sdss.SDSS, "TIMEOUT", aq_sdss.SDSS.TIMEOUT)
    monkeypatch.setenv(sky.CACHE_ENV, str(tmp_path / "env-cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with cache_conf.set_temp("cache_active", False):
        yield


@pytest.fixture
def fake(monkeypatch):
    server = FakeSDSS(files=frame_files())
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    return server


def no_network(monkeypatch):
    def refuse(method, url, **kwargs):
        raise AssertionError(f"unexpected request {method} {url}")

    monkeypatch.setattr(aq_sdss.SDSS, "_request", refuse)


def client(tmp_path, **kw) -> sky.SDSSClient:
    kw.setdefault("timeout", 5)
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.001)
    return sky.SDSSClient(tmp_path / "cache", **kw)


# ------------------------------------------------------------------------------------------
# Positions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "38.33 -0.107",
        "38.33, -0.107",
        "  38.33,-0.107 ",
        (38.33, -0.107),
        [38.33, -0.107],
        np.array([38.33, -0.107]),
        (38.33 * u.deg, -0.107 * u.deg),
        ("38.33", "-0.107"),
    ],
)
def test_parse_position_degrees(text):
    c = sky.parse_position(text)
    assert c.frame.name == "icrs"
    assert c.ra.deg == pytest.approx(38.33) and c.dec.deg == pytest.approx(-0.107)


@pytest.mark.parametrize(
    "text",
    [
        "02h33m19.3s -00d06m25s",
        "02:33:19.3 -00:06:25",
        "02:33:19.3, -00:06:25",
        "02 33 19.3 -00 06 25",
        "2h33m19.3s -0d6m25s",
    ],
)
def test_parse_position_sexagesimal(text):
    c = sky.parse_position(text)
    assert c.ra.deg == pytest.approx(38.3304167, abs=1e-6)
    assert c.dec.deg == pytest.approx(-(6 / 60 + 25 / 3600), abs=1e-6)


def test_parse_position_skycoord_goes_to_icrs():
    g = SkyCoord(l=96.0 * u.deg, b=-60.0 * u.deg, frame="galactic")
    c = sky.parse_position(g)
    assert c.frame.name == "icrs"
    assert c.separation(g).arcsec < 1e-6
    with pytest.raises(InvalidQueryError, match="one sky position"):
        sky.parse_position(SkyCoord([1, 2] * u.deg, [3, 4] * u.deg))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("garbage", "garbage"),
        ("", "empty"),
        ("38.33", "38.33"),
        ("1 2 3", "1 2 3"),
        ("NGC 6976", "NGC 6976.*online"),
        ("400 0", "RA 400"),
        ("-1 0", "RA -1"),
        ("10 95", "Dec 95"),
        ("10 -90.5", "Dec -90.5"),
        ("nan 0", "finite"),
        ("10 inf", "finite"),
        ((float("nan"), 0.0), "finite"),
        ((1.0, 2.0, 3.0), "two values"),
        (("a", 1), "not a number"),
        ((1 * u.m, 2 * u.deg), "not an angle"),
        ("25h00m00s +10d", "hours"),
        ("10:00:00 +95:00:00", "Dec 95"),
        (None, "None"),
    ],
)
def test_parse_position_rejects(value, match):
    with pytest.raises(InvalidQueryError, match=match):
        sky.parse_position(value)


def test_parse_position_names_only_when_allowed(monkeypatch):
    from astropy.coordinates.name_resolve import NameResolveError

    seen = []

    def from_name(cls, name, frame="icrs", **kw):
        seen.append(name)
        if name == "Mrk 739":
            return SkyCoord(174.12 * u.deg, 21.596 * u.deg)
        if name == "offline":
            raise NameResolveError("All Sesame queries failed. Unable to retrieve coordinates.\n x")
        raise NameResolveError(f"Unable to find coordinates for name '{name}' using http://x")

    monkeypatch.setattr(SkyCoord, "from_name", classmethod(from_name))
    with pytest.raises(InvalidQueryError):
        sky.parse_position("Mrk 739")
    assert seen == []
    c = sky.parse_position("Mrk 739", allow_names=True)
    assert c.ra.deg == pytest.approx(174.12)
    # Positions are never sent to the resolver.
    sky.parse_position("38.33 -0.107", allow_names=True)
    assert seen == ["Mrk 739"]
    with pytest.raises(InvalidQueryError, match="Sesame"):
        sky.parse_position("no such thing", allow_names=True)
    with pytest.raises(RemoteError, match="could not be reached") as err:
        sky.parse_position("offline", allow_names=True, timeout=3)
    assert "\n" not in str(err.value) and "3 s" in str(err.value)


@pytest.mark.parametrize(
    ("value", "arcsec"),
    [(60, 60.0), ("30", 30.0), ("1 arcmin", 60.0), (2 * u.arcmin, 120.0), ("0.5deg", None)],
)
def test_parse_radius(value, arcsec):
    if arcsec is None:
        with pytest.raises(InvalidQueryError, match="limit"):
            sky.parse_radius(value)
    else:
        assert sky.parse_radius(value) == pytest.approx(arcsec)


@pytest.mark.parametrize("value", [0, -1, float("nan"), "wide", 3 * u.kg, True])
def test_parse_radius_rejects(value):
    with pytest.raises(InvalidQueryError):
        sky.parse_radius(value)


def test_bands_and_client_options(tmp_path, monkeypatch):
    assert sky.normalize_bands("zrg") == ("g", "r", "z")
    assert sky.normalize_bands(["i", "i"]) == ("i",)
    for bad in ("ugrizy", "", "x"):
        with pytest.raises(InvalidQueryError):
            sky.normalize_bands(bad)
    for kw in (
        {"timeout": 0},
        {"timeout": float("nan")},
        {"retries": -1},
        {"retries": 1.5},
        {"backoff": -1},
        {"data_release": 7},
    ):
        with pytest.raises(InvalidQueryError):
            sky.SDSSClient(tmp_path, **kw)
    c = sky.SDSSClient()
    assert (c.timeout, c.retries, c.data_release) == (15.0, 3, 17)
    assert c.cache_dir == tmp_path / "env-cache"  # SSALD_CACHE_DIR
    monkeypatch.delenv(sky.CACHE_ENV)
    assert sky.default_cache_dir().parts[-2:] in (("ssald-desktop", "sdss"), ("Cache", "sdss"))


def test_import_is_light():
    code = (
        "import sys, ssald_desktop.core.sky; "
        "bad = [m for m in ('astroquery', 'requests', 'PySide6') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------
# Field lookup
# ------------------------------------------------------------------------------------------


def test_find_fields_recorded_answer(tmp_path, fake):
    c = client(tmp_path, timeout=7)
    fields = c.find_fields("0h8m05.63s +14d50m23.3s", radius=2)
    # xid_im.txt holds 18 detections in 6 fields: one entry per field.
    assert sorted(fields) == sorted(
        FieldId(*t)
        for t in [
            (1904, 3, 163),
            (1739, 3, 315),
            (1011, 3, 44),
            (1043, 3, 15),
            (1904, 3, 164),
            (1043, 3, 14),
        ]
    )
    assert len(set(fields)) == len(fields) == 6
    # No rowc/colc in the recording and three detections in every field: the field of the
    # detection nearest to the position comes first.
    table = Table.read(XID_IM, format="ascii.csv", comment="#")
    sep = SkyCoord(table["ra"], table["dec"], unit="deg").separation(
        sky.parse_position("0h8m05.63s +14d50m23.3s")
    )
    nearest = table[int(np.argmin(sep))]
    assert fields[0] == FieldId(int(nearest["run"]), int(nearest["camcol"]), int(nearest["field"]))
    assert all(kw.get("timeout") == 7 for _, _, kw in fake.calls)
    ((method, url, kw),) = [q for q in fake.queries if "data" in q[2]]
    assert method == "POST" and url.endswith("/dr17/en/tools/search/X_Results.aspx")
    assert kw["timeout"] == 7 and aq_sdss.SDSS.TIMEOUT == 7
    assert kw["data"]["radius"] == pytest.approx(2 / 60)
    upload = kw["files"]["upload"][1]
    assert "2.0234" in upload and "14.8398" in upload  # the position, as numbers


def test_find_fields_prefers_rerun_301_and_central_fields(tmp_path, monkeypatch):
    table = (
        b"#Table1\nra,dec,run,rerun,camcol,field,rowc,colc\n"
        b"38.3300,-0.1070,2820,301,3,123,1450.0,1000.0\n"  # near the bottom edge
        b"38.3300,-0.1070,2820,301,3,122,700.0,1100.0\n"  # near the centre
        b"38.3301,-0.1071,2820,301,3,122,700.2,1100.3\n"
        b"38.3300,-0.1070,2820,40,3,122,744.0,1024.0\n"  # an old rerun, perfectly central
        b"38.3300,-0.1070,4263,301,4,60,300.0,1024.0\n"
    )
    server = FakeSDSS(xid=table)
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    fields = client(tmp_path).find_fields(INSIDE)
    assert fields == [
        FieldId(2820, 3, 122),
        FieldId(4263, 4, 60),
        FieldId(2820, 3, 123),
        FieldId(2820, 3, 122, rerun=40),
    ]


def test_find_fields_outside_footprint(tmp_path, monkeypatch):
    server = FakeSDSS(xid=b"#Table1\nra,dec,run,rerun,camcol,field,rowc,colc\n")
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    with pytest.raises(OutsideFieldError, match="RA 200.00000, Dec -80.00000"):
        client(tmp_path).find_fields("200 -80")


def test_find_fields_rejects_bad_input_before_any_request(tmp_path, monkeypatch):
    no_network(monkeypatch)
    c = client(tmp_path)
    with pytest.raises(InvalidQueryError, match="1; DROP TABLE"):
        c.find_fields("1; DROP TABLE PhotoObjAll")
    with pytest.raises(InvalidQueryError, match="limit"):
        c.find_fields(INSIDE, radius="10 arcmin")


# ------------------------------------------------------------------------------------------
# Field download and cache
# ------------------------------------------------------------------------------------------


def test_fetch_field_caches_real_frames_and_reopens_offline(tmp_path, fake, monkeypatch):
    c = client(tmp_path)
    steps = list(c.iter_fetch_field("2820-3-122"))
    assert [s.done for s in steps] == [0, 1, 2, 3, 4, 5] and steps[-1].total == 5
    folder = c.fetch_field("2820-3-122")  # already complete: no request
    assert folder == tmp_path / "cache" / "frames" / "2820-3-122"
    assert len(fake.downloads) == 5
    # The URLs astroquery's own get_images would download.
    matches = Table(rows=[(2820, 301, 3, 122)], names=("run", "rerun", "camcol", "field"))
    expected = [
        fc._target
        for fc in aq_sdss.SDSS.get_images_async(matches=matches, band="ugriz", data_release=17)
    ]
    assert fake.downloads == expected
    assert all(kw["timeout"] == 5 for _, _, kw in fake.calls)
    # The files are the archive's bytes, nothing left half-written.
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(frame_files())
    for name, original in frame_files().items():
        assert (folder / name).read_bytes() == original.read_bytes()
    assert not list(c.cache_dir.rglob("*.part"))

    # A cached field opens with no network at all.
    no_network(monkeypatch)
    assert c.fetch_field(FieldId(2820, 3, 122), "ugriz") == folder
    cached = open_frame_set(folder)
    assert cached.bands == BANDS and cached.field_id == FieldId(2820, 3, 122)
    for band in BANDS:
        name = FieldId(2820, 3, 122).frame_name(band)
        with bz2.open(FIELD_DIR / name) as fh, fits.open(io.BytesIO(fh.read())) as original:
            np.testing.assert_array_equal(cached[band].data, original[0].data)
            assert cached[band].header["CRVAL1"] == original[0].header["CRVAL1"]

    # The position is found in the cache offline, through the footprint index...
    assert c.index_path.is_file()
    assert c.cached_field_containing(INSIDE) == FieldId(2820, 3, 122)
    assert c.cached_field_containing("38.33 -0.5") is None
    frames = c.fetch_field_at(INSIDE, bands="gr")
    assert frames.field_id == FieldId(2820, 3, 122) and frames.bands == ("g", "r")
    assert bool(frames.contains(sky.parse_position(INSIDE)))
    # ... which is rebuilt from the folders when lost or damaged.
    c.index_path.write_text("{not json")
    assert c.cached_field_containing(INSIDE) == FieldId(2820, 3, 122)
    c.index_path.unlink()
    assert sky.SDSSClient(c.cache_dir).cached_field_containing(INSIDE) == FieldId(2820, 3, 122)


def test_fetch_field_downloads_only_missing_bands(tmp_path, fake):
    c = client(tmp_path)
    c.fetch_field("2820-3-122", bands="r")
    assert c.cached_bands("2820-3-122") == ("r",)
    c.fetch_field("2820-3-122", bands="gr")
    assert c.cached_bands("2820-3-122") == ("g", "r")
    assert [x.rsplit("/", 1)[-1] for x in fake.downloads] == [
        "frame-r-002820-3-0122.fits.bz2",
        "frame-g-002820-3-0122.fits.bz2",
    ]


def test_fetch_field_at_tries_candidates_until_one_covers(tmp_path, monkeypatch):
    # The cone search ranks field 2583-2-136 (far away: RA 323) first; it does not cover the
    # position, so the next candidate, 2820-3-122, is fetched and opened.
    table = (
        b"#Table1\nra,dec,run,rerun,camcol,field,rowc,colc\n"
        b"38.3300,-0.1070,2583,301,2,136,744.0,1024.0\n"
        b"38.3300,-0.1070,2820,301,3,122,700.0,1100.0\n"
    )
    files = {**frame_files(), **frame_files(OTHER_FIELD_DIR)}
    server = FakeSDSS(xid=table, files=files)
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    c = client(tmp_path)
    frames = c.fetch_field_at(INSIDE, bands="r")
    assert frames.field_id == FieldId(2820, 3, 122)
    assert [x.rsplit("/", 1)[-1] for x in server.downloads] == [
        "frame-r-002583-2-0136.fits.bz2",
        "frame-r-002820-3-0122.fits.bz2",
    ]
    no_network(monkeypatch)
    assert c.fetch_field_at(INSIDE, bands="r").field_id == FieldId(2820, 3, 122)


def test_fetch_field_at_outside_every_candidate(tmp_path, monkeypatch):
    table = b"#Table1\nra,dec,run,rerun,camcol,field\n38.33,-0.107,2583,301,2,136\n"
    server = FakeSDSS(xid=table, files=frame_files(OTHER_FIELD_DIR))
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    with pytest.raises(OutsideFieldError, match="2583-2-136"):
        client(tmp_path).fetch_field_at(INSIDE, bands="r")


class _Body(MockResponse):
    """A response whose body stops after ``cut`` bytes, by truncation or by an error."""

    def __init__(self, content, *, cut, error=None, length=None):
        super().__init__(content=content, headers={"Content-Length": str(length or len(content))})
        self.cut, self.error = cut, error

    def iter_content(self, chunk_size):
        data = self.content[: self.cut]
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    "make",
    [
        # Connection dropped mid-body.
        lambda b: _Body(b, cut=len(b) // 2, error=requests.exceptions.ChunkedEncodingError("x")),
        # Fewer bytes than announced.
        lambda b: _Body(b, cut=len(b) // 2),
        # A truncated body whose Content-Length matches: only the bzip2 check sees it.
        lambda b: _Body(b[: len(b) // 2], cut=len(b)),
        # An HTML page with status 200.
        lambda b: MockResponse(content=b"<html>maintenance</html>"),
    ],
)
def test_broken_download_never_counts_as_cached(tmp_path, monkeypatch, make):
    good = FIELD_DIR / "frame-r-002820-3-0122.fits.bz2"
    calls = []

    def request(method, url, **kw):
        calls.append(url)
        return make(good.read_bytes())

    monkeypatch.setattr(aq_sdss.SDSS, "_request", request)
    c = client(tmp_path, retries=1)
    with pytest.raises(RemoteError, match="frame-r-002820-3-0122") as err:
        c.fetch_field("2820-3-122", "r")
    assert "2 attempts" in str(err.value) and len(calls) == 2
    folder = c.field_folder("2820-3-122")
    assert not folder.exists() or list(folder.iterdir()) == []  # no frame, no temporary file
    assert c.cached_bands("2820-3-122") == ()


def test_transient_failure_is_retried_then_succeeds(tmp_path, monkeypatch):
    good = FIELD_DIR / "frame-r-002820-3-0122.fits.bz2"
    answers = [
        requests.exceptions.ConnectionError("connection reset"),
        MockResponse(content=b"busy", status_code=503),
        None,
    ]

    def request(method, url, **kw):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer or MockResponse(content=good.read_bytes())

    monkeypatch.setattr(aq_sdss.SDSS, "_request", request)
    folder = client(tmp_path, retries=2).fetch_field("2820-3-122", "r")
    assert (folder / good.name).read_bytes() == good.read_bytes() and answers == []


def test_missing_file_is_not_retried(tmp_path, monkeypatch):
    server = FakeSDSS(files={})
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    with pytest.raises(RemoteError, match="HTTP 404") as err:
        client(tmp_path, retries=3).fetch_field("2820-3-122", "u")
    assert len(server.calls) == 1
    assert "data.sdss.org" in str(err.value)


def test_fetch_field_rejects_bad_ids(tmp_path, monkeypatch):
    no_network(monkeypatch)
    c = client(tmp_path)
    for bad in ("2820-3", "2820-7-122", "a-b-c", "../../etc"):
        with pytest.raises(InvalidQueryError):
            c.fetch_field(bad)
    with pytest.raises(InvalidQueryError, match="y"):
        c.fetch_field("2820-3-122", bands="gy")


# ------------------------------------------------------------------------------------------
# Spectra
# ------------------------------------------------------------------------------------------


def test_fetch_spectrum_real_file(tmp_path, monkeypatch):
    original = SPECTRA / "spec-4238-55455-0037.fits"
    server = FakeSDSS(
        specobj=b"#Table1\nrun2d,plate,mjd,fiberID\nv5_10_0,4238,55455,37\n",
        files={original.name: original},
    )
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    c = client(tmp_path)
    path = c.fetch_spectrum(4238, 55455, 37)
    assert path == tmp_path / "cache" / "spectra" / "spec-4238-55455-0037.fits"
    assert path.read_bytes() == original.read_bytes()
    matches = Table(rows=[("v5_10_0", 4238, 55455, 37)], names=("run2d", "plate", "mjd", "fiberID"))
    (fc,) = aq_sdss.SDSS.get_spectra_async(matches=matches, data_release=17)
    assert server.downloads == [fc._target]
    commands = [(q[2].get("params") or {}).get("cmd", "") for q in server.queries]
    sql = [cmd for cmd in commands if "SpecObjAll" in cmd and "fDocColumns" not in cmd]
    assert "s.plate=4238" in sql[0] and "s.mjd=55455" in sql[0] and "s.fiberid=37" in sql[0]
    with fits.open(path) as got, fits.open(original) as want:
        np.testing.assert_array_equal(got[1].data["flux"], want[1].data["flux"])
    no_network(monkeypatch)
    assert c.fetch_spectrum("4238", 55455, 37) == path


def test_fetch_spectrum_at_recorded_answer(tmp_path, monkeypatch):
    content = SPECTRA / "spec-0266-51602-0001.fits"
    server = FakeSDSS(xid=XID_SP.read_bytes(), files={"spec-0751-52251-0160.fits": content})
    monkeypatch.setattr(aq_sdss.SDSS, "_request", server)
    c = client(tmp_path)
    path = c.fetch_spectrum_at("0h8m05.63s +14d50m23.3s", radius="2 arcsec")
    assert path.name == "spec-0751-52251-0160.fits"
    assert server.downloads == [
        "https://data.sdss.org/sas/dr17/sdss/spectro/redux/26/spectra/0751/"
        "spec-0751-52251-0160.fits"
    ]
    assert path.read_bytes() == content.read_bytes()
    (crossid,) = [q for q in server.queries if "data" in q[2]]
    assert "SpecObjAll" in crossid[2]["data"]["uquery"]


def test_fetch_spectrum_nothing_there(tmp_path, monkeypatch):
    empty = b"#Table1\nra,dec,plate,mjd,fiberID,run2d,sciencePrimary\n"
    monkeypatch.setattr(aq_sdss.SDSS, "_request", FakeSDSS(xid=empty, specobj=empty))
    c = client(tmp_path)
    with pytest.raises(OutsideFieldError, match="no SDSS spectrum"):
        c.fetch_spectrum_at(INSIDE)
    with pytest.raises(RemoteError, match="no spectrum plate 1 MJD 2 fiber 3"):
        c.fetch_spectrum(1, 2, 3)


@pytest.mark.parametrize(
    "args",
    [
        (0, 55455, 37),
        (-4238, 55455, 37),
        ("x", 1, 1),
        (4238.5, 1, 1),
        (1, True, 1),
        (1, 1, None),
        (1, 1, float("nan")),
    ],
)
def test_fetch_spectrum_validates_ids(tmp_path, monkeypatch, args):
    no_network(monkeypatch)
    with pytest.raises(InvalidQueryError):
        client(tmp_path).fetch_spectrum(*args)


# ------------------------------------------------------------------------------------------
# Unreachable and silent servers
# ------------------------------------------------------------------------------------------


def test_unreachable_server_gives_remote_error_after_all_attempts(tmp_path, monkeypatch):
    calls = []

    def refuse(method, url, **kw):
        calls.append(url)
        raise requests.exceptions.ConnectionError(
            f"HTTPSConnectionPool(host='skyserver.sdss.org', port=443): Max retries exceeded "
            f"with url: {url} (Caused by NameResolutionError('Failed to resolve'))"
        )

    monkeypatch.setattr(aq_sdss.SDSS, "_request", refuse)
    c = client(tmp_path, retries=2, backoff=0.05, timeout=4)
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        c.find_fields(INSIDE)
    elapsed = time.monotonic() - start
    assert len(calls) == 3  # retries + 1 attempts
    assert elapsed >= 0.05 + 0.1  # the backoff waits, doubling
    message = str(err.value)
    assert "skyserver.sdss.org" in message and "could not be reached" in message
    assert "3 attempts" in message and "timeout 4 s" in message
    assert "RA 38.33000, Dec -0.10700" in message and "\n" not in message

    calls.clear()
    with pytest.raises(RemoteError, match="data.sdss.org.*could not be reached"):
        c.fetch_field("2820-3-122", "g")
    assert len(calls) == 3
    assert c.cached_bands("2820-3-122") == ()


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(conn)  # held open, never read nor answered

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent():
    server = SilentServer()
    with (
        aq_sdss.conf.set_temp("skyserver_baseurl", server.url),
        aq_sdss.conf.set_temp("sas_baseurl", server.url + "/sas"),
    ):
        yield server
    server.close()


def test_silent_server_query_times_out(tmp_path, silent):
    c = client(tmp_path, timeout=1, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        c.find_fields(INSIDE)
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 10, elapsed  # two attempts of about 1 s each
    assert len(silent.connections) >= 2
    message = str(err.value)
    assert "did not answer within 1 s" in message and "2 attempts" in message
    assert silent.url in message


def test_silent_server_download_times_out(tmp_path, silent):
    c = client(tmp_path, timeout=1, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="did not answer within 1 s"):
        c.fetch_field("2820-3-122", "r")
    assert time.monotonic() - start < 10
    assert c.cached_bands("2820-3-122") == ()


# ------------------------------------------------------------------------------------------
# ssald-cli fetch-field
# ------------------------------------------------------------------------------------------


def test_cli_fetch_field_by_id(tmp_path, fake, capsys):
    assert cli.main(["fetch-field", "--field", "2820-3-122", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "frames" / "2820-3-122")
    text = "\n".join(out)
    assert "field 2820-3-122" in text and "bands ugriz" in text
    assert "1489 x 2048" in text and "RA 38.2" in text and "Dec -0.2" in text
    assert len(fake.downloads) == 5


def test_cli_fetch_field_by_position_from_cache(tmp_path, fake, monkeypatch, capsys):
    c = sky.SDSSClient(tmp_path)
    c.fetch_field("2820-3-122", "r")
    no_network(monkeypatch)
    argv = ["fetch-field", "38.33", "-0.107", "--bands", "r", "--cache", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "field 2820-3-122" in capsys.readouterr().out


def test_cli_unreachable_server_one_line(tmp_path, monkeypatch, capsys):
    def refuse(method, url, **kw):
        raise requests.exceptions.ConnectionError("Failed to resolve 'data.sdss.org'")

    monkeypatch.setattr(aq_sdss.SDSS, "_request", refuse)
    monkeypatch.setattr(sky, "DEFAULT_BACKOFF", 0.001)
    argv = ["fetch-field", "--field", "2820-3-122", "--cache", str(tmp_path), "--retries", "1"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in captured.err
    assert err.startswith("ssald-cli fetch-field: error:") and "could not be reached" in err
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch-field"],
        ["fetch-field", "38.33", "-0.107", "--field", "2820-3-122"],
        ["fetch-field", "--field", "2820-3"],
        ["fetch-field", "nowhere"],
        ["fetch-field", "--field", "2820-3-122", "--bands", "xyz"],
    ],
)
def test_cli_bad_input(tmp_path, monkeypatch, capsys, argv):
    no_network(monkeypatch)  # and names are unknown (see _isolated)
    assert cli.main([*argv, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# Live SDSS (skipped by default; run with -m remote_data)
# ------------------------------------------------------------------------------------------


@pytest.mark.remote_data
def test_live_fetch_field_and_spectrum(tmp_path):
    c = sky.SDSSClient(tmp_path, timeout=60, retries=2)
    fields = c.find_fields(INSIDE)
    assert FieldId(2820, 3, 122) in fields
    folder = c.fetch_field("2820-3-122", "r")
    original = FIELD_DIR / "frame-r-002820-3-0122.fits.bz2"
    np.testing.assert_array_equal(
        open_frame_set(folder)["r"].data, open_frame_set([original])["r"].data
    )
    spec = c.fetch_spectrum(4238, 55455, 37)
    with fits.open(spec) as got:
        assert got[0].header["PLATEID"] == 4238
