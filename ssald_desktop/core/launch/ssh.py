"""The SSH launcher: a run on any host reachable with the system ``ssh`` (OpenSSH).

Every connection is one ``ssh`` process started with an argument list: ``BatchMode=yes`` (never
a password prompt), a ``ConnectTimeout``, keep-alives, an optional identity (with
``IdentitiesOnly``), and a per-launcher host-key policy with its own ``known_hosts`` file.
Files travel inside the ssh connection as gzipped tar streams (``tar -xzf -`` remotely to
upload, the helper's ``pack`` to fetch) rather than with ``scp``: the legacy scp protocol
passes remote paths through the remote shell, and a streamed tar needs no second quoting
scheme, keeps the checkpoints folder whole and costs one connection.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ssald_desktop.core.launch.base import LaunchError, default_data_dir
from ssald_desktop.core.launch.remote import RemoteLauncher, Transport, _last_line

HOST_KEY_POLICIES = ("accept-new", "strict", "off")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.%A-Za-z]+\])$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*$")


def parse_ssh_target(target: str) -> tuple[str | None, str, int]:
    """``ssh://[USER@]HOST[:PORT]`` -> (user, host, port).

    Raises
    ------
    LaunchError
        For anything else (a missing host, a bad port, a path or query part).
    """
    parts = urlsplit(target)
    if parts.scheme != "ssh" or not parts.hostname:
        raise LaunchError(f"{target!r} is not an SSH target: use ssh://USER@HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise LaunchError(
            f"{target!r}: an SSH target is ssh://USER@HOST[:PORT] only (set the remote folder "
            "with the workdir setting)"
        )
    try:
        port = parts.port or 22
    except ValueError:
        raise LaunchError(f"{target!r}: the port must be a number 1..65535") from None
    user = unquote(parts.username) if parts.username else None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    check_host(host, user, port)
    return user, host.strip("[]"), port


def check_host(host: str, user: str | None, port: int) -> None:
    """Refuse host names, users and ports that ssh could read as options or that are invalid."""
    if not host or not _HOST_RE.match(host) or host.startswith("-"):
        raise LaunchError(f"{host!r} is not a valid host name")
    if user is not None and not _USER_RE.match(user):
        raise LaunchError(f"{user!r} is not a valid user name")
    if not 1 <= int(port) <= 65535:
        raise LaunchError(f"port {port} is not in 1..65535")


def ssh_option_path(path: str) -> str:
    """A file path as the value of an ``ssh -o`` option.

    ssh splits option values at whitespace (UserKnownHostsFile takes several files) and expands
    ``%`` tokens: the path is double-quoted, with backslashes and ``"`` escaped and ``%``
    doubled.
    """
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


class SshTransport(Transport):
    """Runs remote commands with the system ``ssh``.

    Parameters
    ----------
    host, user, port : str, str or None, int
        Where to connect.
    identity : path-like, optional
        A private key file (``ssh -i``; only that key is offered).
    host_keys : {"accept-new", "strict", "off"}
        ``accept-new`` records an unknown host's key and refuses a changed one; ``strict``
        refuses unknown hosts; ``off`` checks nothing (tests, throwaway hosts).
    known_hosts : path-like, optional
        This launcher's known-hosts file (default ``<data dir>/known_hosts``).
    connect_timeout : float
        Seconds to wait for the TCP connection and the SSH banner.
    """

    def __init__(self, host: str, user: str | None = None, port: int = 22,
                 identity: str | Path | None = None, host_keys: str = "accept-new",
                 known_hosts: str | Path | None = None, connect_timeout: float = 10.0):
        check_host(host if ":" not in host else f"[{host}]", user, port)
        if host_keys not in HOST_KEY_POLICIES:
            raise LaunchError(
                f"host key policy must be one of {HOST_KEY_POLICIES}, got {host_keys!r}"
            )
        self.host, self.user, self.port = host, user, int(port)
        self.identity = str(identity) if identity else None
        self.host_keys = host_keys
        self.known_hosts = str(known_hosts) if known_hosts else str(
            default_data_dir() / "known_hosts")
        self.connect_timeout = float(connect_timeout)

    def describe(self) -> str:
        """``user@host:port``."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def options(self) -> list[str]:
        """The ssh options (without host and command)."""
        timeout = max(1, round(self.connect_timeout))
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-o", "LogLevel=ERROR", "-p", str(self.port)]
        if self.host_keys == "off":
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
            opts += ["-o", "StrictHostKeyChecking="
                     + ("accept-new" if self.host_keys == "accept-new" else "yes"),
                     "-o", f"UserKnownHostsFile={ssh_option_path(self.known_hosts)}"]
        if self.identity:
            # ssh expands % tokens in identity paths too
            opts += ["-i", self.identity.replace("%", "%%"), "-o", "IdentitiesOnly=yes"]
        if self.user:
            opts += ["-l", self.user]
        return opts

    def argv(self, command: str) -> list[str]:
        """``ssh OPTIONS -- HOST COMMAND`` (``--``: a host is never read as an option)."""
        if self.identity and not Path(self.identity).is_file():
            raise LaunchError(f"{self.identity}: no such identity (private key) file")
        return ["ssh", *self.options(), "--", self.host, command]

    def explain(self, stderr: str, returncode: int) -> str | None:
        """Turn ssh's own failures (exit status 255) into clear messages."""
        if returncode != 255:
            return None
        where = self.describe()
        text = stderr
        if "Connection refused" in text:
            return (f"{where}: connection refused (no SSH server listening on port "
                    f"{self.port}?)")
        if "timed out" in text.lower():
            return (f"{where}: connection timed out after {self.connect_timeout:.0f} s (host "
                    "down, wrong address, or the port filtered?)")
        if "Permission denied" in text:
            key = self.identity or "ssh's default keys"
            return (f"{where}: the key was refused (Permission denied; identity {key}); check "
                    "the identity file and the remote ~/.ssh/authorized_keys")
        if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
            return (f"{where}: host key verification failed (the host's key is unknown or "
                    f"differs from the one recorded in {self.known_hosts})")
        if "Could not resolve hostname" in text:
            return f"{where}: cannot resolve the host name {self.host!r}"
        if "No route to host" in text or "Network is unreachable" in text:
            return f"{where}: unreachable ({_last_line(text)})"
        if "Load key" in text or "invalid format" in text:
            return f"{self.identity}: not a usable private key ({_last_line(text)})"
        if "Connection closed" in text or "Connection reset" in text:
            return f"{where}: the connection was closed ({_last_line(text)})"
        return f"ssh to {where} failed: {_last_line(text) or 'exit status 255'}"


class SshLauncher(RemoteLauncher):
    """Runs ``model.train`` on an SSH host.

    See :class:`SshTransport` (connection) and
    :class:`~ssald_desktop.core.launch.remote.RemoteLauncher` (remote settings) for the
    parameters.
    """

    kind = "ssh"

    def __init__(self, host: str, user: str | None = None, port: int = 22,
                 identity: str | Path | None = None, host_keys: str = "accept-new",
                 known_hosts: str | Path | None = None, connect_timeout: float = 10.0,
                 **remote: Any):
        super().__init__(**remote)
        self._transport = SshTransport(host, user, port, identity, host_keys, known_hosts,
                                       connect_timeout)

    @property
    def transport(self) -> SshTransport:
        """The ssh transport."""
        return self._transport

    def target(self) -> str:
        """``ssh://user@host:port``."""
        t = self._transport
        host = f"[{t.host}]" if ":" in t.host else t.host
        return f"ssh://{t.user + '@' if t.user else ''}{host}:{t.port}"

    def settings(self) -> dict[str, Any]:
        """Connection and remote settings."""
        t = self._transport
        return {**self.common_settings(), "host": t.host, "user": t.user, "port": t.port,
                "identity": t.identity, "host_keys": t.host_keys, "known_hosts": t.known_hosts,
                "connect_timeout": t.connect_timeout}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SshLauncher:
        """Rebuild from :meth:`settings`."""
        s = {k: v for k, v in settings.items() if k != "model_shipped"}
        return cls(**s)
