"""The Cloud TPU VM launcher: create or reuse a TPU VM with ``gcloud``, run there, fetch back.

Command syntax from the Google Cloud SDK's own help (``gcloud compute tpus tpu-vm create|
describe|ssh|scp|delete --help``, SDK 528.0.0) and the TPU software-version list of
https://cloud.google.com/tpu/docs/runtimes (TensorFlow images ``tpu-vm-tf-X.Y.Z-pjrt``):

- ``gcloud compute tpus tpu-vm create NAME --zone=Z --project=P --accelerator-type=v3-8
  --version=tpu-vm-tf-2.16.1-pjrt``
- ``gcloud compute tpus tpu-vm describe NAME --zone=Z --project=P --format=json``
- ``gcloud compute tpus tpu-vm ssh NAME --zone=Z --project=P --worker=0 --command=CMD``
- ``gcloud compute tpus tpu-vm scp NAME:SRC DEST --zone=Z --project=P --worker=0``
- ``gcloud compute tpus tpu-vm delete NAME --zone=Z --project=P``

Every builder below is a pure function returning the argument list. The remote command of
``--command`` is made by the same quoting builder as for SSH
(:mod:`ssald_desktop.core.launch.remote`). On the VM the run uses ``--strategy tpu --tpu
local``, reads its data from ``gs://`` and its run folder (checkpoints included) is copied to
``gs://`` with ``gcloud storage rsync`` every few minutes and when the run ends, so a VM that
is preempted or deleted loses at most the last interval.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ssald_desktop.core.launch.base import RESULT_NAMES, LaunchError, RunRecord
from ssald_desktop.core.launch.remote import (
    RemoteLauncher,
    Transport,
    _last_line,
    helper_command,
    quote_command,
    safe_extract,
)

GCLOUD_INSTALL_URL = "https://cloud.google.com/sdk/docs/install"
DEFAULT_VERSION = "tpu-vm-tf-2.16.1-pjrt"
DEFAULT_ACCELERATOR = "v3-8"
#: Seconds between two copies of the run folder to Cloud Storage during a run.
SYNC_INTERVAL_S = 300
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9:.]{4,62}[a-z0-9]$")
_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_ACCEL_RE = re.compile(r"^v[0-9]+[a-z]*(-[0-9]+)?$|^v[0-9]+(litepod|p|e)-[0-9]+$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_WORKDIR_RE = re.compile(r"^[A-Za-z0-9._/~-]+$")
#: Wrapper on the VM: record the pid, copy the run folder to $1 (gs://) every few minutes
#: while training (a loop that ends by itself within 5 s of the training's end, when
#: exit_status appears), and once more at the end.
TPU_WRAPPER = (
    'echo $$ > launch.pid; dest="$1"; shift; '
    '( n=0; while [ ! -e exit_status ]; do sleep 5; n=$((n+5)); '
    f'if [ $n -ge {SYNC_INTERVAL_S} ]; then n=0; '
    'gcloud storage rsync --recursive . "$dest" >> sync.log 2>&1; fi; done ) & '
    '"$@"; s=$?; echo $s > exit_status; '
    'gcloud storage rsync --recursive . "$dest" >> sync.log 2>&1; exit $s'
)


def check_tpu_names(project: str, zone: str, name: str) -> None:
    """Refuse project, zone and TPU names that Google Cloud would not accept."""
    if not _PROJECT_RE.match(project):
        raise LaunchError(f"{project!r} is not a Google Cloud project id")
    if not _ZONE_RE.match(zone):
        raise LaunchError(f"{zone!r} is not a Google Cloud zone (e.g. europe-west4-a)")
    if not _NAME_RE.match(name):
        raise LaunchError(
            f"{name!r} is not a TPU name (lowercase letters, digits and hyphens, starting with a "
            "letter, at most 63 characters)"
        )


def parse_tpu_target(target: str) -> tuple[str, str, str]:
    """``tpu-vm://PROJECT/ZONE/NAME`` -> (project, zone, name)."""
    prefix = "tpu-vm://"
    if not target.startswith(prefix):
        raise LaunchError(f"{target!r} is not a TPU VM target: use tpu-vm://PROJECT/ZONE/NAME")
    parts = target[len(prefix):].strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise LaunchError(f"{target!r}: a TPU VM target is tpu-vm://PROJECT/ZONE/NAME")
    project, zone, name = parts
    check_tpu_names(project, zone, name)
    return project, zone, name


def _where(project: str, zone: str) -> list[str]:
    return [f"--zone={zone}", f"--project={project}"]


def gcloud_create(project: str, zone: str, name: str, accelerator_type: str = DEFAULT_ACCELERATOR,
                  version: str = DEFAULT_VERSION, spot: bool = False) -> list[str]:
    """``gcloud compute tpus tpu-vm create`` (blocks until the VM is READY)."""
    if not _ACCEL_RE.match(accelerator_type):
        raise LaunchError(f"{accelerator_type!r} is not a TPU accelerator type (e.g. v3-8, v2-8)")
    if not _VERSION_RE.match(version):
        raise LaunchError(f"{version!r} is not a TPU software version (e.g. {DEFAULT_VERSION})")
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "create", name, *_where(project, zone),
            f"--accelerator-type={accelerator_type}", f"--version={version}"]
    if spot:
        argv.append("--spot")
    return argv + ["--quiet"]


def gcloud_describe(project: str, zone: str, name: str) -> list[str]:
    """``gcloud compute tpus tpu-vm describe`` as JSON."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "describe", name, *_where(project, zone),
            "--format=json"]


def gcloud_ssh(project: str, zone: str, name: str, command: str, worker: str = "0") -> list[str]:
    """``gcloud compute tpus tpu-vm ssh NAME ... --command=CMD``.

    ``CMD`` is one argument: gcloud hands it to ssh as the remote command, which the VM's shell
    interprets (build it with :func:`~ssald_desktop.core.launch.remote.quote_command`).
    """
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *_where(project, zone),
            f"--worker={worker}", "--quiet", f"--command={command}", "--",
            "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15"]


def gcloud_scp(project: str, zone: str, name: str, remote_path: str, local_path: str,
               recurse: bool = False, worker: str = "0") -> list[str]:
    """``gcloud compute tpus tpu-vm scp NAME:REMOTE LOCAL`` (download)."""
    if not _WORKDIR_RE.match(remote_path):
        raise LaunchError(f"{remote_path!r}: a TPU VM path must be letters, digits, ._/~- only")
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{name}:{remote_path}", local_path,
            *_where(project, zone), f"--worker={worker}", "--quiet"]
    if recurse:
        argv.append("--recurse")
    return argv


def gcloud_delete(project: str, zone: str, name: str) -> list[str]:
    """``gcloud compute tpus tpu-vm delete`` (no prompt)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *_where(project, zone),
            "--quiet"]


def require_gcloud() -> str:
    """The path of ``gcloud``, or a :class:`LaunchError` saying how to install it."""
    path = shutil.which("gcloud")
    if path is None:
        raise LaunchError(
            "the Google Cloud CLI (gcloud) is not installed or not on PATH: install the Google "
            f"Cloud SDK from {GCLOUD_INSTALL_URL}, then run `gcloud auth login`"
        )
    return path


def run_gcloud(argv: list[str], timeout: float = 900.0,
               input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a gcloud argument list; a missing gcloud gives the install message."""
    require_gcloud()
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{' '.join(argv[:5])}: no answer within {timeout:.0f} s") from None


class TpuTransport(Transport):
    """Remote commands through ``gcloud compute tpus tpu-vm ssh --command``."""

    def __init__(self, project: str, zone: str, name: str):
        check_tpu_names(project, zone, name)
        self.project, self.zone, self.name = project, zone, name

    def describe(self) -> str:
        """``tpu-vm://project/zone/name``."""
        return f"tpu-vm://{self.project}/{self.zone}/{self.name}"

    def argv(self, command: str) -> list[str]:
        """The gcloud ssh argument list."""
        require_gcloud()
        return gcloud_ssh(self.project, self.zone, self.name, command)

    def explain(self, stderr: str, returncode: int) -> str | None:
        """Messages for gcloud's and ssh's own failures."""
        if returncode == 0:
            return None
        where = self.describe()
        if "NOT_FOUND" in stderr or "was not found" in stderr:
            return f"{where}: no such TPU VM ({_last_line(stderr)})"
        if "PERMISSION_DENIED" in stderr or "does not have permission" in stderr:
            return f"{where}: permission denied by Google Cloud ({_last_line(stderr)})"
        if "gcloud auth login" in stderr or "credential" in stderr.lower():
            return f"{where}: gcloud is not logged in; run `gcloud auth login`"
        if returncode == 255:
            return f"ssh to {where} failed: {_last_line(stderr) or 'exit status 255'}"
        return None


class TpuVmLauncher(RemoteLauncher):
    """Runs ``model.train --strategy tpu --tpu local`` on a Cloud TPU VM.

    Parameters
    ----------
    project, zone, name : str
        The TPU VM (``tpu-vm://PROJECT/ZONE/NAME``).
    accelerator_type, version : str
        For creating it (``v3-8``, ``v2-8``...; a TensorFlow TPU software version).
    gcs_dir : str
        ``gs://bucket/folder``: each run folder is copied to ``gcs_dir/<run id>``.
    create : bool
        Create the VM when it does not exist (otherwise that is an error).
    spot : bool
        Create it as a Spot VM.
    **remote
        :class:`~ssald_desktop.core.launch.remote.RemoteLauncher` settings (the remote Python
        defaults to ``python3``, the VM's TensorFlow; the work folder to ``ssald-runs``).
    """

    kind = "tpu-vm"

    def __init__(self, project: str, zone: str, name: str, gcs_dir: str = "",
                 accelerator_type: str = DEFAULT_ACCELERATOR, version: str = DEFAULT_VERSION,
                 create: bool = True, spot: bool = False, **remote: Any):
        remote.setdefault("workdir", "ssald-runs")
        remote["strategy"] = "tpu"
        super().__init__(**remote)
        if not _WORKDIR_RE.match(self.workdir):
            raise LaunchError(f"{self.workdir!r}: a TPU VM work folder must be letters, digits "
                              "and ._/~- only")
        if gcs_dir and not gcs_dir.startswith("gs://"):
            raise LaunchError(f"{gcs_dir!r}: the run folder copy must go to a gs:// URI")
        gcloud_create(project, zone, name, accelerator_type, version)  # checks the values
        self._transport = TpuTransport(project, zone, name)
        self.gcs_dir = gcs_dir.rstrip("/")
        self.accelerator_type, self.version = accelerator_type, version
        self.create, self.spot = bool(create), bool(spot)

    @property
    def transport(self) -> TpuTransport:
        """The gcloud ssh transport."""
        return self._transport

    def target(self) -> str:
        """``tpu-vm://project/zone/name``."""
        return self._transport.describe()

    def settings(self) -> dict[str, Any]:
        """VM and remote settings."""
        t = self._transport
        s = self.common_settings()
        s.pop("strategy")
        return {**s, "project": t.project, "zone": t.zone, "name": t.name,
                "gcs_dir": self.gcs_dir, "accelerator_type": self.accelerator_type,
                "version": self.version, "create": self.create, "spot": self.spot}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TpuVmLauncher:
        """Rebuild from :meth:`settings`."""
        s = {k: v for k, v in settings.items() if k != "model_shipped"}
        return cls(**s)

    # -- the VM -----------------------------------------------------------------------------
    def vm_state(self) -> str | None:
        """The VM's state (``READY``, ``CREATING``, ``STOPPED``...); None if there is no VM."""
        t = self._transport
        proc = run_gcloud(gcloud_describe(t.project, t.zone, t.name), timeout=120)
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            if "NOT_FOUND" in stderr or "not found" in stderr.lower():
                return None
            raise LaunchError(f"{t.describe()}: gcloud describe failed: {_last_line(stderr)}")
        try:
            return str(json.loads(proc.stdout.decode()).get("state", "UNKNOWN"))
        except json.JSONDecodeError:
            raise LaunchError(f"{t.describe()}: gcloud describe gave no JSON") from None

    def ensure_vm(self) -> str:
        """Reuse the VM when READY, create it when missing; returns ``reused`` or ``created``."""
        t = self._transport
        state = self.vm_state()
        if state == "READY":
            return "reused"
        if state is not None:
            raise LaunchError(
                f"{t.describe()}: the TPU VM is {state}, not READY (start it with `gcloud compute "
                f"tpus tpu-vm start {t.name} --zone={t.zone} --project={t.project}` or wait)"
            )
        if not self.create:
            raise LaunchError(f"{t.describe()}: no such TPU VM (and creating it is off)")
        proc = run_gcloud(gcloud_create(t.project, t.zone, t.name, self.accelerator_type,
                                        self.version, self.spot), timeout=1800)
        if proc.returncode != 0:
            raise LaunchError(f"{t.describe()}: creating the TPU VM failed: "
                              f"{_last_line(proc.stderr.decode('utf-8', 'replace'))}")
        return "created"

    def delete_vm(self) -> None:
        """Delete the VM (the copies on gs:// stay)."""
        t = self._transport
        proc = run_gcloud(gcloud_delete(t.project, t.zone, t.name), timeout=900)
        if proc.returncode != 0:
            raise LaunchError(f"{t.describe()}: deleting the TPU VM failed: "
                              f"{_last_line(proc.stderr.decode('utf-8', 'replace'))}")

    # -- the run ----------------------------------------------------------------------------
    def remote_train_argv(self, record: RunRecord, run_dir: str) -> list[str]:
        """``model.train --strategy tpu --tpu local`` on the VM."""
        from ssald_desktop.core.launch.local import CONFIG_FILE, train_argv

        return ["env", "PYTHONUNBUFFERED=1", *train_argv(
            self.python, posixpath.join(run_dir, CONFIG_FILE), run_dir, record.data, "tpu",
            record.overrides, tpu="local")]

    def wrapper(self, record: RunRecord) -> tuple[str, list[str]]:
        """The syncing wrapper, with the run's gs:// folder as its first argument."""
        return TPU_WRAPPER, [self.gcs_uri(record)]

    def gcs_uri(self, record: RunRecord) -> str:
        """Where the run folder is copied on Cloud Storage."""
        return f"{self.gcs_dir}/{record.id}"

    def start(self, record: RunRecord, folder: Path, resume: bool = False) -> None:
        """Create or reuse the VM, then start the run as on any remote host."""
        if not record.data.startswith("gs://"):
            raise LaunchError(
                f"{record.data!r}: a TPU VM reads its data from Cloud Storage; give a gs:// URI "
                "of TFRecord shards (ssald-cli mine writes them)"
            )
        if not self.gcs_dir:
            raise LaunchError("a TPU VM run needs a gs:// folder for its checkpoints (gcs_dir)")
        state = self.ensure_vm()
        record.settings = {**record.settings, "vm": state}
        super().start(record, folder, resume=resume)

    def fetch_raw(self, record: RunRecord, folder: Path, dest: Path) -> None:
        """Pack the results on the VM (gcloud ssh), copy the tarball back (gcloud scp)."""
        t = self._transport
        tarball = posixpath.join(record.remote_dir, "results.tar.gz")
        command = (helper_command(self.python, "pack", record.remote_dir, *RESULT_NAMES)
                   + " > " + quote_command([tarball]))
        self.transport.run(command, timeout=self.command_timeout)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "results.tar.gz"
            proc = run_gcloud(gcloud_scp(t.project, t.zone, t.name, tarball, str(local)))
            if proc.returncode != 0 or not local.exists():
                raise LaunchError(f"{t.describe()}: gcloud scp of {tarball} failed: "
                                  f"{_last_line(proc.stderr.decode('utf-8', 'replace'))}")
            with local.open("rb") as fh:
                safe_extract(fh, dest)
