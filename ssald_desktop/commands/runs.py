"""``ssald-cli runs``: the training runs recorded on this machine, and control over them.

- ``runs list [--refresh] [--json OUT]``: every run with its target and last known state
  (``--refresh`` asks each run's host first).
- ``runs show RUN_ID [--log N] [--json OUT]``: status, progress, latest metrics, the last log
  lines.
- ``runs stop RUN_ID``: SIGTERM to the run's process group (SIGKILL after ``--timeout``).
- ``runs resume RUN_ID [--wait]``: start it again in its run folder, from its last checkpoint.
- ``runs fetch RUN_ID [--dest DIR]``: copy the exported encoder and the checkpoints here.
- ``runs attach RUN_ID``: follow a run (started by another process, before a restart...) to
  its end, printing progress.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ssald_desktop.commands.train import add_registry_option, follow


def _registry(args: argparse.Namespace) -> Any:
    from ssald_desktop.core.launch import RunRegistry

    return RunRegistry(args.registry) if args.registry else RunRegistry()


def _write(data: Any, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = []
    for record in registry.records():
        if args.refresh:
            registry.open(record.id).poll()
            record = registry.load(record.id)
        last = record.last or {}
        rows.append({"id": record.id, "name": record.name, "target": record.target,
                     "state": last.get("state", "starting"), "step": last.get("step"),
                     "total_steps": last.get("total_steps"), "created": record.created,
                     "checked": last.get("time"), "data": record.data})
    if not rows:
        print(f"no runs in {registry.runs_dir}")
    for r in rows:
        steps = f"{r['step']}/{r['total_steps']}" if r["total_steps"] else "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        print(f"{r['id']:<44} {r['state']:<9} {steps:>11}  {r['target']:<32} {when}")
    _write(rows, args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    run = _registry(args).open(args.run_id)
    update = run.poll()
    st = update.status
    rec = run.record
    print(f"run {run.id} ({rec.name or 'unnamed'}) on {rec.target}")
    print(f"  state     {st.state}" + (f" (pid {st.pid})" if st.alive else ""))
    if st.total_steps:
        pct = f" ({100 * st.progress:.0f}%)" if st.progress is not None else ""
        print(f"  step      {st.step}/{st.total_steps}{pct}")
    print(f"  folder    {rec.remote_dir}")
    print(f"  data      {rec.data}")
    if st.encoder:
        print(f"  encoder   {st.encoder}")
    if rec.fetched:
        print(f"  fetched   {rec.fetched.get('encoder') or rec.fetched.get('checkpoints')}")
    if st.metrics:
        keys = ("loss", "invariance", "variance", "covariance", "rankme", "images_per_s")
        print("  metrics   " + "  ".join(f"{k} {st.metrics[k]:.4g}" for k in keys
                                          if isinstance(st.metrics.get(k), (int, float))))
    if st.message:
        print(f"  message   {st.message}")
    tail = run.log_tail(args.log)
    if tail:
        print(f"  last {args.log} log lines:")
        for line in tail.splitlines():
            print(f"    {line}")
    _write({**st.to_dict(), "target": rec.target, "name": rec.name, "folder": rec.remote_dir,
            "data": rec.data, "config": rec.config}, args.json)
    return 1 if st.state == "failed" else 0


def _stop(args: argparse.Namespace) -> int:
    run = _registry(args).open(args.run_id)
    st = run.stop(timeout=args.timeout)
    print(f"run {run.id}: {st.state} at step {st.step}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    run = _registry(args).open(args.run_id)
    run.resume(args.set)
    print(f"run {run.id} resumed on {run.record.target} (pid {run.record.pid})", flush=True)
    if args.wait:
        return follow(run, args.interval, fetch=True)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    run = _registry(args).open(args.run_id)
    got = run.fetch(args.dest)
    for key, path in got.items():
        print(f"{key}: {path}")
    return 0


def _attach(args: argparse.Namespace) -> int:
    run = _registry(args).open(args.run_id)
    return follow(run, args.interval, fetch=not args.no_fetch)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``runs`` with its sub-commands."""
    p = sub.add_parser("runs", help="list, show, stop, resume, fetch or attach training runs",
                       description="Training runs recorded on this machine.")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    rsub.required = True

    q = rsub.add_parser("list", help="all runs with their last known state")
    q.add_argument("--refresh", action="store_true", help="poll every run's host first")
    q.add_argument("--json", metavar="OUT", help="write the list as JSON")
    q.set_defaults(func=_list)

    q = rsub.add_parser("show", help="status, progress, metrics and log of a run")
    q.add_argument("run_id")
    q.add_argument("--log", type=int, default=20, help="log lines to show (default 20)")
    q.add_argument("--json", metavar="OUT", help="write the status as JSON")
    q.set_defaults(func=_show)

    q = rsub.add_parser("stop", help="stop a run (it can be resumed)")
    q.add_argument("run_id")
    q.add_argument("--timeout", type=float, default=20.0,
                   help="seconds between SIGTERM and SIGKILL (default 20)")
    q.set_defaults(func=_stop)

    q = rsub.add_parser("resume", help="resume a stopped or failed run from its checkpoint")
    q.add_argument("run_id")
    q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change a value for the rest of the run, e.g. train.epochs=60")
    q.add_argument("--wait", action="store_true", help="follow it to the end")
    q.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    q.set_defaults(func=_resume)

    q = rsub.add_parser("fetch", help="copy the encoder and checkpoints of a run here")
    q.add_argument("run_id")
    q.add_argument("--dest", help="folder (default: the run's folder in the registry)")
    q.set_defaults(func=_fetch)

    q = rsub.add_parser("attach", help="follow a run to its end, printing progress")
    q.add_argument("run_id")
    q.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    q.add_argument("--no-fetch", action="store_true", help="do not fetch a remote run's results")
    q.set_defaults(func=_attach)

    for action in rsub.choices.values():
        add_registry_option(action)
