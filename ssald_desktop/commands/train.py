"""``ssald-cli train``: start a training run locally, on an SSH host or on a Cloud TPU VM.

``ssald-cli train --target local|ssh://USER@HOST[:PORT]|tpu-vm://PROJECT/ZONE/NAME --config FILE
[--identity KEY] [--data SRC] [--wait]`` prints the run id and returns (the run goes on, detached;
``ssald-cli runs attach RUN_ID`` follows it later); with ``--wait`` it prints progress lines
until the run ends, fetches a remote run's encoder and checkpoints, and prints where the
exported encoder landed. Ctrl-C while waiting detaches; it does not stop the run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def add_registry_option(parser: argparse.ArgumentParser) -> None:
    """``--registry DIR``: where runs are recorded (shared with ``ssald-cli runs``)."""
    parser.add_argument("--registry", metavar="DIR",
                        help="data folder holding runs/ (default $SSALD_DATA_DIR or the user "
                             "data folder)")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def progress_line(update: Any) -> str | None:
    """One line for a poll that brought new training metrics (None otherwise)."""
    status = update.status
    lines = [m for m in update.metrics if m.get("event") in ("train", "checkpoint")]
    if not lines:
        return None
    m = lines[-1]
    total = status.total_steps
    where = f"step {m.get('step')}/{total}" if total else f"step {m.get('step')}"
    pct = f" ({100 * status.progress:.0f}%)" if status.progress is not None else ""
    rate = m.get("images_per_s") or next(
        (x.get("images_per_s") for x in reversed(lines) if x.get("images_per_s")), None)
    return (f"{where}{pct}  loss {_fmt(m.get('loss'))}  inv {_fmt(m.get('invariance'))}  "
            f"var {_fmt(m.get('variance'))}  cov {_fmt(m.get('covariance'))}  "
            f"rankme {_fmt(m.get('rankme'))}  {_fmt(rate, 4)} img/s")


def follow(run: Any, interval: float, fetch: bool, timeout: float | None = None) -> int:
    """Print progress until the run ends; fetch a remote run's results; 0 when finished."""
    last_state = [""]

    def show(update: Any) -> None:
        st = update.status
        if st.state != last_state[0]:
            extra = f": {st.message.splitlines()[0]}" if st.message and st.state == "unknown" \
                else ""
            print(f"run {run.id}: {st.state}{extra}", flush=True)
            last_state[0] = st.state
        line = progress_line(update)
        if line:
            print(line, flush=True)

    try:
        status = run.wait(interval=interval, timeout=timeout, callback=show)
    except KeyboardInterrupt:
        print(f"detached; the run goes on. Reattach with: ssald-cli runs attach {run.id}")
        return 130
    if status.state == "stopped":
        print(f"run {run.id} was stopped at step {status.step}; resume it with: "
              f"ssald-cli runs resume {run.id}")
        return 1
    print(f"finished at step {status.step}; encoder on {run.record.target}: {status.encoder}")
    if run.launcher.remote and fetch:
        got = run.fetch()
        print(f"fetched the encoder to {got.get('encoder')} (checkpoints: "
              f"{got.get('checkpoints')})")
    elif not run.launcher.remote:
        print(f"encoder: {status.encoder}")
    return 0


def _launcher_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "strategy": args.strategy, "python": args.python, "identity": args.identity,
        "host_keys": args.host_keys, "known_hosts": args.known_hosts,
        "connect_timeout": args.connect_timeout, "workdir": args.workdir,
        "ship_model": args.ship_model,
    }
    if args.min_free_gb is not None:
        opts["min_free_bytes"] = int(args.min_free_gb * 1e9)
    if args.target.startswith("tpu-vm://"):
        opts.update({"gcs_dir": args.gcs_dir or "", "accelerator_type": args.accelerator_type,
                     "version": args.tpu_version, "create": not args.no_create,
                     "spot": args.spot})
        opts.pop("strategy")
    elif args.target == "local":
        opts = {"strategy": args.strategy, "python": args.python}
    return opts


def _train(args: argparse.Namespace) -> int:
    from ssald_desktop.core.launch import (
        LaunchError,
        RunRegistry,
        launch,
        load_config,
        make_launcher,
    )

    launcher = make_launcher(args.target, **_launcher_options(args))  # a bad target first
    config = Path(args.config)
    cfg = load_config(config)
    data = args.data or cfg["data"]["source"]
    if not data:
        raise LaunchError(f"{config}: no data.source in the configuration; give --data SRC")
    registry = RunRegistry(args.registry) if args.registry else RunRegistry()
    run = launch(launcher, config, data, name=args.name, overrides=args.set, registry=registry)
    print(f"run {run.id} started on {run.record.target} (pid {run.record.pid}); "
          f"folder {run.record.remote_dir}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"run_id": run.id, "target": run.record.target,
                                               "pid": run.record.pid,
                                               "remote_dir": run.record.remote_dir}) + "\n")
    if not args.wait:
        print(f"follow it with: ssald-cli runs attach {run.id}")
        return 0
    return follow(run, args.interval, fetch=not args.no_fetch)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    p = sub.add_parser(
        "train", help="start a training run (local, SSH host or Cloud TPU VM)",
        description="Start python -m model.train on a target, detached. Prints the run id; "
                    "--wait follows it to the end and fetches the encoder.")
    p.add_argument("--target", default="local",
                   help="local, ssh://USER@HOST[:PORT] or tpu-vm://PROJECT/ZONE/NAME "
                        "(default local)")
    p.add_argument("--config", required=True, help="training configuration (JSON)")
    p.add_argument("--data", help="data source as the target sees it: folder of images, shards "
                                  "or gs:// URI (default: data.source of the configuration)")
    p.add_argument("--name", help="a name for the run (part of its id)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one configuration value (repeatable)")
    p.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                   help="tf.distribute strategy (a TPU VM always uses tpu)")
    p.add_argument("--wait", action="store_true",
                   help="print progress until the run ends, then fetch its encoder")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between polls (--wait)")
    p.add_argument("--no-fetch", action="store_true", help="with --wait: do not fetch back")
    p.add_argument("--json", metavar="OUT", help="write the run id and where it runs as JSON")
    g = p.add_argument_group("remote hosts (ssh:// and tpu-vm://)")
    g.add_argument("--identity", help="SSH private key file (ssh -i)")
    g.add_argument("--python", help="the Python that runs model.train (remote default python3)")
    g.add_argument("--workdir", help="remote folder for runs (default ~/ssald-runs)")
    g.add_argument("--host-keys", choices=["accept-new", "strict", "off"],
                   help="host key policy (default accept-new, with its own known_hosts file)")
    g.add_argument("--known-hosts", help="known_hosts file of this launcher")
    g.add_argument("--connect-timeout", type=float, help="seconds to connect (default 10)")
    g.add_argument("--min-free-gb", type=float,
                   help="refuse to start with less free disk remotely (default 2)")
    g.add_argument("--ship-model", choices=["auto", "always", "never"],
                   help="copy the model package when the remote cannot import it (auto)")
    t = p.add_argument_group("Cloud TPU VM (tpu-vm://)")
    t.add_argument("--gcs-dir", help="gs:// folder for the run folder and checkpoints")
    t.add_argument("--accelerator-type", help="e.g. v3-8 (default), v2-8")
    t.add_argument("--tpu-version", help="TPU software version (default tpu-vm-tf-2.16.1-pjrt)")
    t.add_argument("--no-create", action="store_true", help="fail if the TPU VM does not exist")
    t.add_argument("--spot", action="store_true", help="create the TPU VM as a Spot VM")
    add_registry_option(p)
    p.set_defaults(func=_train)
