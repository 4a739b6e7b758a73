"""Send candidate tables to TOPCAT, Aladin or DS9 over SAMP.

SAMP (the IVOA Simple Application Messaging Protocol, Taylor et al. 2015, IVOA Rec. 1.3) lets
desktop astronomy tools exchange tables through a *hub* that one of them runs. A table goes as
the ``table.load.votable`` message: the table is written as a VOTable to a temporary file and
its ``file://`` URL is sent to every connected application that subscribes to that message type
(TOPCAT and Aladin do; DS9 does with its catalogue tool). Each recipient is called with
``callAndWait`` so the result reports which application loaded the table and which refused or
did not answer within the timeout.

The hub is found as SAMP's standard profile says: the lockfile named by ``$SAMP_HUB``
(``std-lockurl:file://...``) or ``~/.samp``. Without a hub, or with a hub but no application
that accepts tables, :class:`SampError` says so and what to start.

The SAMP implementation is :mod:`pyvo.samp` (where :mod:`astropy.samp` moved; astropy 8
deprecates its copy), else :mod:`astropy.samp`; both are imported only when a table is sent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssald_desktop.core.errors import SsaldError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Mapping

    from astropy.table import Table

__all__ = [
    "MTYPE",
    "SampError",
    "SampResult",
    "hub_lockfile",
    "send_candidates",
    "send_table",
]

#: The SAMP message type that loads a VOTable.
MTYPE = "table.load.votable"
CLIENT_NAME = "SSALD desktop"
DEFAULT_TIMEOUT_S = 10.0

_spool: Path | None = None
_spool_lock = threading.Lock()


class SampError(SsaldError):
    """No hub, no application that accepts tables, or a hub that does not answer."""


@dataclass
class SampResult:
    """What happened to a table sent over SAMP.

    ``recipients`` maps each addressed client id to its name; ``replies`` maps it to
    ``"ok"``, ``"warning: ..."`` or ``"error: ..."`` (a refusal or no answer in time).
    """

    url: str
    path: Path
    rows: int
    recipients: dict[str, str] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)

    @property
    def loaded_by(self) -> list[str]:
        """Names of the applications that reported success."""
        return [self.recipients[c] for c, r in self.replies.items() if r == "ok"
                or r.startswith("warning")]

    def summary(self) -> str:
        """One line for a status bar."""
        parts = [f"{self.recipients[c]}: {r}" for c, r in self.replies.items()]
        return f"sent {self.rows} rows over SAMP ({'; '.join(parts)})"


def _samp() -> Any:
    """The SAMP package: pyvo.samp, else astropy.samp (deprecated there since astropy 8)."""
    try:
        import pyvo.samp as samp
    except ImportError:  # pragma: no cover - pyvo comes with astroquery
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import astropy.samp as samp
    return samp


def hub_lockfile() -> Path:
    """Where SAMP's standard profile looks for the hub: ``$SAMP_HUB`` or ``~/.samp``."""
    env = os.environ.get("SAMP_HUB")
    if env:
        if env.startswith("std-lockurl:"):
            url = env[len("std-lockurl:"):]
            return Path(url[len("file://"):] if url.startswith("file://") else url)
        raise SampError(f"SAMP_HUB={env!r} is not a standard-profile lockfile URL "
                        "(std-lockurl:file://...)")
    return Path.home() / ".samp"


def _spool_dir() -> Path:
    """A private temporary folder for sent tables, removed when the process exits.

    Tables stay until then: a recipient may read the file after it has answered.
    """
    global _spool
    with _spool_lock:
        if _spool is None or not _spool.is_dir():
            _spool = Path(tempfile.mkdtemp(prefix="ssald-samp-"))
            atexit.register(shutil.rmtree, _spool, True)
        return _spool


def _write_votable(table: Table, name: str) -> Path:
    path = _spool_dir() / f"{uuid.uuid4().hex}.vot"
    t = table.copy(copy_data=False)
    t.meta = {k: v for k, v in table.meta.items() if isinstance(v, (str, int, float))}
    t.meta.setdefault("name", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes about masked values or unknown units
        t.write(path, format="votable", overwrite=True)
    return path


def _connect(samp: Any, client_name: str) -> Any:
    lockfile = hub_lockfile()
    client = samp.SAMPIntegratedClient(
        name=client_name, description="Dual-AGN candidate search in SDSS imaging",
        metadata={"samp.name": client_name,
                  "samp.description.text": "Dual-AGN candidate search in SDSS imaging"},
        callable=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.connect()
    except samp.SAMPHubError as exc:
        raise SampError(
            f"no SAMP hub is running (none found via {lockfile}): start TOPCAT, Aladin or DS9 "
            f"(each runs or joins a hub) and send again ({exc})") from None
    except (OSError, samp.SAMPProxyError, samp.SAMPClientError) as exc:
        raise SampError(f"the SAMP hub named in {lockfile} does not answer ({exc}); restart "
                        "TOPCAT/Aladin, or remove a stale lockfile") from None
    return client


def _send(table: Table, name: str, recipients: Iterable[str] | None, timeout: float,
          client_name: str) -> SampResult:
    samp = _samp()
    path = _write_votable(table, name)
    url = path.as_uri()
    result = SampResult(url=url, path=path, rows=len(table))
    client = _connect(samp, client_name)
    try:
        subscribed = list(client.get_subscribed_clients(MTYPE))
        names = {}
        for cid in subscribed:
            try:
                names[cid] = str(client.get_metadata(cid).get("samp.name", cid))
            except Exception:  # a client that left meanwhile
                names[cid] = cid
        if not names:
            raise SampError(f"a SAMP hub is running but no connected application accepts "
                            f"tables ({MTYPE}); start TOPCAT or Aladin and send again")
        wanted = None if recipients is None else {r.lower() for r in recipients}
        targets = {c: n for c, n in names.items() if wanted is None or c.lower() in wanted
                   or n.lower() in wanted}
        if not targets:
            raise SampError(f"none of {', '.join(sorted(recipients or []))} is connected to "
                            f"the SAMP hub; connected and accepting tables: "
                            f"{', '.join(sorted(names.values()))}")
        message = {"samp.mtype": MTYPE,
                   "samp.params": {"url": url, "table-id": path.stem, "name": name}}
        for cid, cname in targets.items():
            result.recipients[cid] = cname
            try:
                reply = client.call_and_wait(cid, message, str(max(1, int(round(timeout)))))
            except (samp.SAMPProxyError, samp.SAMPClientError, OSError) as exc:
                result.replies[cid] = f"error: {exc}"
                continue
            status = str(reply.get("samp.status", ""))
            if status == samp.SAMP_STATUS_OK:
                result.replies[cid] = "ok"
            else:
                err = reply.get("samp.error", {}) or {}
                text = err.get("samp.errortxt", "") if isinstance(err, dict) else str(err)
                kind = "warning" if status == samp.SAMP_STATUS_WARNING else "error"
                result.replies[cid] = f"{kind}: {text or status or 'no status'}"
    finally:
        try:
            client.disconnect()
        except Exception:
            pass
    return result


def send_table(table: Table, *, name: str = "SSALD candidates",
               recipients: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
               client_name: str = CLIENT_NAME) -> SampResult:
    """Send an astropy table to the SAMP applications that load tables.

    Parameters
    ----------
    table : astropy.table.Table
        The rows to send (e.g. :func:`ssald_desktop.core.labels.candidates_table`).
    name : str
        The name the recipients show for the table.
    recipients : iterable of str, optional
        Client names (e.g. ``"topcat"``) or ids to address; default every subscriber.
    timeout : float
        Seconds to wait for each recipient's reply, and bound of the whole exchange.
    client_name : str
        The name this sender registers with at the hub.

    Returns
    -------
    SampResult
        The recipients and their replies.

    Raises
    ------
    SampError
        No hub; a hub without an application that loads tables; a hub that does not answer.
    """
    if not timeout > 0:
        raise SampError(f"SAMP timeout {timeout!r} s is not positive")
    wanted = None if recipients is None else [str(r) for r in recipients]
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = _send(table, name, wanted, timeout, client_name)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    # The XML-RPC calls to the hub have no socket timeout of their own: run them in a daemon
    # thread so that a hub that hangs cannot hang the caller (the GUI or a test).
    worker = threading.Thread(target=work, name="ssald-samp-send", daemon=True)
    worker.start()
    limit = timeout * (len(wanted) if wanted else 8) + 10.0
    worker.join(limit)
    if worker.is_alive():
        raise SampError(f"the SAMP hub ({hub_lockfile()}) did not finish the exchange within "
                        f"{limit:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def send_candidates(candidates: Iterable[Mapping[str, Any]], *,
                    labels: Mapping[str, str] | None = None, **kwargs: Any) -> SampResult:
    """Send a candidate list (object id, RA, Dec, score, label...) as one table.

    See :func:`ssald_desktop.core.labels.candidates_table` for the columns and
    :func:`send_table` for the keyword arguments.
    """
    from ssald_desktop.core.labels import candidates_table

    return send_table(candidates_table(candidates, labels), **kwargs)
