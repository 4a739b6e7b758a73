"""Training launchers: one interface, three backends (local process, SSH host, Cloud TPU VM).

Typical use (the CLI's ``train`` and ``runs`` commands and the GUI's training panel)::

    from ssald_desktop.core.launch import launch, make_launcher, RunRegistry

    launcher = make_launcher("ssh://astro@gpu-box:22", identity="~/.ssh/id_ed25519",
                             python="/opt/venv/bin/python")
    run = launch(launcher, "tiny.json", data="/data/gz2/images", name="first try")
    for update in run.follow(interval=2):      # in a worker thread
        plot(update.metrics); show(update.log); bar(update.status.progress)
    run.fetch()                                # encoder.keras + checkpoints, locally

    run = RunRegistry().open(run_id)           # after a restart: reattach

Every run is started as a separate, detached process (``python -m model.train``; see the
design notes: ``fit`` cannot be interrupted from a thread, a tf.distribute strategy owns its
devices for the life of a process), so runs outlive the GUI and the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ssald_desktop.core.launch.base import (
    ACTIVE_STATES,
    FINAL_STATES,
    Launcher,
    LaunchError,
    Run,
    RunRecord,
    RunRegistry,
    RunStatus,
    RunUpdate,
    check_overrides,
    default_data_dir,
    new_run_id,
)
from ssald_desktop.core.launch.local import LocalLauncher
from ssald_desktop.core.launch.ssh import SshLauncher, parse_ssh_target
from ssald_desktop.core.launch.tpu import (
    TpuVmLauncher,
    gcloud_create,
    gcloud_delete,
    gcloud_describe,
    gcloud_scp,
    gcloud_ssh,
    parse_tpu_target,
    require_gcloud,
)

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "LaunchError",
    "Launcher",
    "LocalLauncher",
    "Run",
    "RunRecord",
    "RunRegistry",
    "RunStatus",
    "RunUpdate",
    "SshLauncher",
    "TpuVmLauncher",
    "default_data_dir",
    "gcloud_create",
    "gcloud_delete",
    "gcloud_describe",
    "gcloud_scp",
    "gcloud_ssh",
    "launch",
    "launcher_from_record",
    "load_config",
    "make_launcher",
    "open_run",
    "require_gcloud",
]

_KINDS: dict[str, type[Launcher]] = {
    "local": LocalLauncher, "ssh": SshLauncher, "tpu-vm": TpuVmLauncher,
}


def make_launcher(target: str, **options: Any) -> Launcher:
    """A launcher for a target string.

    Parameters
    ----------
    target : str
        ``local``, ``ssh://[USER@]HOST[:PORT]`` or ``tpu-vm://PROJECT/ZONE/NAME``.
    **options
        Settings of that launcher (``strategy``, ``python``; for SSH ``identity``,
        ``host_keys``, ``known_hosts``, ``connect_timeout``, ``workdir``, ``min_free_bytes``,
        ``ship_model``; for a TPU VM also ``gcs_dir``, ``accelerator_type``, ``version``,
        ``create``, ``spot``). ``None`` values are ignored.
    """
    opts = {k: v for k, v in options.items() if v is not None}
    if target == "local":
        return LocalLauncher(python=opts.get("python"), strategy=opts.get("strategy", "default"))
    if target.startswith("ssh://"):
        user, host, port = parse_ssh_target(target)
        if opts.get("identity"):
            opts["identity"] = str(Path(opts["identity"]).expanduser())
        return SshLauncher(host, user=user, port=port, **opts)
    if target.startswith("tpu-vm://"):
        project, zone, name = parse_tpu_target(target)
        opts.pop("strategy", None)
        return TpuVmLauncher(project, zone, name, **opts)
    raise LaunchError(
        f"{target!r} is not a training target: use local, ssh://USER@HOST[:PORT] or "
        "tpu-vm://PROJECT/ZONE/NAME"
    )


def launcher_from_record(record: RunRecord) -> Launcher:
    """Rebuild the launcher of a saved run."""
    kind = record.settings.get("kind", "")
    cls = _KINDS.get(kind)
    if cls is None:
        raise LaunchError(f"run {record.id}: unknown launcher kind {kind!r}")
    settings = {k: v for k, v in record.settings.items() if k not in ("kind", "vm")}
    return cls.from_settings(settings)


def load_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Validate a training configuration (a JSON file or a dict) and return it as a dict.

    Uses :class:`model.config.Config` (plain Python, no TensorFlow), so a typo in a key fails
    here, naming the file and key, before anything starts.
    """
    from model.config import Config, ConfigError

    try:
        if isinstance(config, dict):
            return Config.from_dict(config).to_dict()
        return Config.load(config).to_dict()
    except ConfigError as exc:
        raise LaunchError(f"configuration: {exc}") from None


def launch(launcher: Launcher | str, config: str | Path | dict[str, Any], data: str, *,
           name: str | None = None, overrides: list[str] | tuple[str, ...] = (),
           registry: RunRegistry | None = None, **options: Any) -> Run:
    """Start a training run and register it.

    Parameters
    ----------
    launcher : Launcher or str
        A launcher, or a target string for :func:`make_launcher` (with ``options``).
    config : path-like or dict
        The training configuration (see ``model/config.py``).
    data : str
        The data source as the target sees it: a folder of images, shards, or ``gs://``.
    name : str, optional
        A human name (kept in the record; a slug of it goes into the run id).
    overrides : sequence of str
        ``section.key=value`` overrides (``model.train --set``).
    registry : RunRegistry, optional
        Where the run is recorded (default: the user data folder).
    **options
        Launcher settings when ``launcher`` is a target string.

    Returns
    -------
    Run
        The handle; the run is already going.
    """
    if isinstance(launcher, str):
        launcher = make_launcher(launcher, **options)
    registry = registry or RunRegistry()
    cfg = load_config(config)
    if overrides:
        check_overrides(cfg, list(overrides), "overrides")
    if not data:
        raise LaunchError("no data: give the data source (folder, shards or gs:// URI)")
    if not launcher.remote and not data.startswith("gs://"):
        data = str(Path(data).expanduser().resolve())
    if not isinstance(config, dict) and name is None:
        name = Path(config).stem
    settings = {"kind": launcher.kind, **launcher.settings()}
    record = RunRecord(id=new_run_id(name), target=launcher.target(), settings=settings,
                       name=name or "", data=data, config=cfg, overrides=list(overrides),
                       strategy=str(settings.get("strategy", "tpu")))
    folder = registry.create(record)
    try:
        launcher.start(record, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    import time

    record.launches.append({"time": time.time(), "kind": "start", "pid": record.pid})
    registry.save(record)
    return Run(record, launcher, registry)


def open_run(run_id: str, registry: RunRegistry | None = None) -> Run:
    """Reattach to a registered run by id."""
    return (registry or RunRegistry()).open(run_id)
