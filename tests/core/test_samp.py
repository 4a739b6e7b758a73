"""SAMP: send candidate tables to a real hub and a real receiving client on loopback.

The hub (pyvo.samp's SAMPHubServer, the SAMP implementation that moved there from astropy)
runs in the test on 127.0.0.1 without the web profile; its lockfile lives in tmp_path and
``$SAMP_HUB`` points at it, with ``$HOME`` moved to tmp_path too, so nothing touches the user's
``~/.samp``. Every wait has a timeout.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from astropy.table import Table

from ssald_desktop.core.labels import candidates_table
from ssald_desktop.core.samp import MTYPE, SampError, hub_lockfile, send_candidates, send_table
from tests.conftest import DATA

samp = pytest.importorskip("pyvo.samp")

GOTHIC = DATA / "catalogs" / "gothic" / "DERIVED_gothic_159_dual_agn_components.csv"


@pytest.fixture
def samp_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    lockfile = tmp_path / "samp-hub.lock"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{lockfile.as_uri()}")
    return lockfile


@pytest.fixture
def hub(samp_home):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = samp.SAMPHubServer(web_profile=False, addr="127.0.0.1",
                                    lockfile=str(samp_home), timeout=60, client_timeout=60)
        server.start(wait=False)
    try:
        yield server
    finally:
        server.stop()


class Receiver:
    """A real SAMP client that loads tables like TOPCAT (or refuses, or never answers)."""

    def __init__(self, name: str, mode: str = "ok"):
        self.name, self.mode = name, mode
        self.tables: list[Table] = []
        self.params: list[dict] = []
        self.got = threading.Event()
        self.client = samp.SAMPIntegratedClient(name=name, addr="127.0.0.1",
                                                metadata={"samp.name": name})
        self.client.connect()
        self.client.bind_receive_call(MTYPE, self._receive)

    def _receive(self, private_key, sender_id, msg_id, mtype, params, extra):
        self.params.append(params)
        url = urlparse(params["url"])
        assert url.scheme == "file"
        self.tables.append(Table.read(unquote(url.path), format="votable"))
        self.got.set()
        if self.mode == "ok":
            self.client.reply(msg_id, {"samp.status": samp.SAMP_STATUS_OK, "samp.result": {}})
        elif self.mode == "refuse":
            self.client.reply(msg_id, {"samp.status": samp.SAMP_STATUS_ERROR, "samp.result": {},
                                       "samp.error": {"samp.errortxt": "no room for tables"}})
        # mode "silent": never replies

    def close(self):
        self.client.disconnect()


def _gothic_candidates(n: int = 12) -> list[dict]:
    t = Table.read(GOTHIC, format="ascii.csv")[:n]
    return [{"object_id": str(r["obj ID"]), "ra": float(r["ra"]), "dec": float(r["dec"]),
             "score": 1.0 - 0.05 * k, "label": "DAGN candidate", "source": "query",
             "reason": f"GOTHIC system {int(r['Number'])}"} for k, r in enumerate(t)]


@pytest.mark.timeout(60)
def test_send_candidates_reaches_a_receiving_client(hub, samp_home):
    assert hub_lockfile() == samp_home and samp_home.is_file()
    rx = Receiver("topcat-test")
    try:
        rows = _gothic_candidates()
        result = send_candidates(rows, name="GOTHIC sample", timeout=10)
        assert rx.got.wait(10)
    finally:
        rx.close()
    assert list(result.recipients.values()) == ["topcat-test"]
    assert list(result.replies.values()) == ["ok"] and result.loaded_by == ["topcat-test"]
    assert result.rows == len(rows) and "topcat-test: ok" in result.summary()
    got = rx.tables[0]
    assert rx.params[0]["name"] == "GOTHIC sample"
    assert [str(x) for x in got["object_id"]] == [r["object_id"] for r in rows]
    np.testing.assert_allclose(got["ra"], [r["ra"] for r in rows])
    np.testing.assert_allclose(got["dec"], [r["dec"] for r in rows])
    assert str(got["ra"].unit) == "deg"
    assert set(str(x) for x in got["label"]) == {"DAGN candidate"}


@pytest.mark.timeout(60)
def test_refusal_and_silence_are_reported_per_recipient(hub):
    ok, refuse, silent = Receiver("loader"), Receiver("refuser", "refuse"), Receiver("mute",
                                                                                     "silent")
    try:
        table = candidates_table(_gothic_candidates(3))
        result = send_table(table, timeout=1)
        only = send_table(table, recipients=["LOADER"], timeout=5)
    finally:
        for r in (ok, refuse, silent):
            r.close()
    by_name = {result.recipients[c]: r for c, r in result.replies.items()}
    assert by_name["loader"] == "ok"
    assert by_name["refuser"] == "error: no room for tables"
    assert by_name["mute"].startswith("error:") and "imeout" in by_name["mute"]
    assert list(only.recipients.values()) == ["loader"]


@pytest.mark.timeout(30)
def test_no_hub_is_a_clear_error(samp_home):
    assert not samp_home.exists()
    with pytest.raises(SampError, match="no SAMP hub is running.*start TOPCAT"):
        send_table(candidates_table(_gothic_candidates(2)), timeout=2)


@pytest.mark.timeout(60)
def test_hub_without_table_loaders_is_a_clear_error(hub):
    other = samp.SAMPIntegratedClient(name="image-only", addr="127.0.0.1")
    other.connect()
    try:
        with pytest.raises(SampError, match="no connected application accepts tables"):
            send_table(candidates_table(_gothic_candidates(2)), timeout=2)
        rx = Receiver("topcat")
        try:
            with pytest.raises(SampError, match="aladin.*connected and accepting tables: "
                                                "topcat"):
                send_table(candidates_table(_gothic_candidates(2)), recipients=["aladin"],
                           timeout=2)
        finally:
            rx.close()
    finally:
        other.disconnect()


def test_bad_samp_hub_variable(monkeypatch):
    monkeypatch.setenv("SAMP_HUB", "web-profile:whatever")
    with pytest.raises(SampError, match="SAMP_HUB"):
        hub_lockfile()
    monkeypatch.delenv("SAMP_HUB")
    assert hub_lockfile() == Path.home() / ".samp"
