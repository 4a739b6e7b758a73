"""``ssald-cli labels``: the durable label store from the command line.

- ``labels add --db DB OBJECT_ID LABEL [--user U] [--ra DEG --dec DEG] [--source S]
  [--round N] [--encoder ID] [--note TEXT]``: append a label (printed once it is durable).
- ``labels undo --db DB [OBJECT_ID | --event N]``: append a reversal of the latest label (of
  the object, or that event).
- ``labels show --db DB [--object ID] [--since N] [--json OUT]``: counts per label and the
  current labels, an object's history, or the events after an event id.
- ``labels export --db DB --out FILE [--format csv|votable|fits] [--label L ...]``.
- ``labels import --db DB FILE [--user U] [--source S] [--all]``: labels from a CSV file.
- ``labels classes --db DB [--add NAME ...]``: list or add label classes.

``--db`` defaults to ``$SSALD_LABELS_DB``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _write_json(data: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def _store(args: argparse.Namespace):
    from ssald_desktop.core.errors import SsaldError
    from ssald_desktop.core.labels import LabelStore

    db = args.db or os.environ.get("SSALD_LABELS_DB")
    if not db:
        raise SsaldError("give the label store with --db PATH (or set SSALD_LABELS_DB)")
    return LabelStore(db)


def _add(args: argparse.Namespace) -> int:
    with _store(args) as store:
        eid = store.add(args.object_id, args.label, args.user, encoder_id=args.encoder,
                        round=args.round, source=args.source, ra=args.ra, dec=args.dec,
                        note=args.note)
        print(f"event {eid}: {args.object_id} -> {store.label_of(args.object_id)} (saved)")
    return 0


def _undo(args: argparse.Namespace) -> int:
    with _store(args) as store:
        eid = store.undo(args.object_id, user=args.user, event_id=args.event)
        if eid is None:
            print("undo: nothing to undo")
            return 0
        ev = store.events_since(eid - 1)[0]
        now = store.label_of(ev.object_id)
        print(f"event {eid}: undid event {ev.reverts} ({ev.object_id}: {ev.label}); "
              f"current label: {now or 'none'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.object:
            events = store.history(args.object)
            print(f"{args.object}: current label {store.label_of(args.object) or 'none'}; "
                  f"{len(events)} event(s)")
        elif args.since is not None:
            events = store.events_since(args.since)
            print(f"{len(events)} event(s) after event {args.since}; "
                  f"{store.new_labels_since(args.since)} new label(s) still in effect")
        else:
            events = None
        if events is not None:
            for e in events:
                what = f"undo of {e.reverts}" if e.kind == "undo" else e.label
                print(f"  {e.id:>6} {e.time} {e.user:<12} {e.object_id:<24} {what}"
                      f" [{e.source}{'' if e.round is None else f', round {e.round}'}]")
            _write_json({"events": [e.to_dict() for e in events]}, args.json)
            return 0
        counts = store.counts()
        current = store.current_events()
        print(f"{store.path}: {len(current)} labelled object(s), last event "
              f"{store.last_event_id()}")
        for label, n in counts.items():
            print(f"  {label:<20} {n}")
        for e in current[-args.limit:] if args.limit else []:
            print(f"  {e.object_id:<24} {e.label:<18} {e.user:<12} {e.time}")
        if len(current) > args.limit:
            print(f"  (latest {args.limit} of {len(current)} shown; export for all)")
        _write_json({"store": str(store.path), "counts": counts,
                     "last_event": store.last_event_id(),
                     "current": {e.object_id: e.label for e in current}}, args.json)
    return 0


def _export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        out = store.export(args.out, fmt=args.format, labels=args.label)
        n = len(store.to_table(args.label))
    print(f"exported {n} label(s) to {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    with _store(args) as store:
        added, skipped = store.import_csv(args.file, user=args.user, source=args.source,
                                          skip_unchanged=not args.all)
    print(f"imported {added} label(s) from {args.file}"
          + (f"; {skipped} unchanged row(s) skipped" if skipped else ""))
    return 0


def _classes(args: argparse.Namespace) -> int:
    with _store(args) as store:
        for name in args.add or []:
            print(f"class {store.add_class(name)!r} available")
        for name in store.labels():
            print(f"  {name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``labels`` and its sub-commands."""
    from ssald_desktop.core.labels import SOURCES

    p = sub.add_parser("labels", help="the label store: add, undo, show, export, import")
    lsub = p.add_subparsers(dest="labels_command", metavar="ACTION")
    lsub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", metavar="PATH",
                       help="label store file (default $SSALD_LABELS_DB)")

    a = lsub.add_parser("add", help="append a label (durable when printed)")
    common(a)
    a.add_argument("object_id")
    a.add_argument("label", help="a label class, e.g. 'DAGN candidate' (quote spaces)")
    a.add_argument("--user", help="who labels (default: login name)")
    a.add_argument("--ra", type=float, help="RA in degrees")
    a.add_argument("--dec", type=float, help="Dec in degrees")
    a.add_argument("--source", choices=SOURCES, default="manual")
    a.add_argument("--round", type=int, help="active-learning round")
    a.add_argument("--encoder", help="id of the encoder that proposed the candidate")
    a.add_argument("--note")
    a.set_defaults(func=_add)

    u = lsub.add_parser("undo", help="reverse the latest label (an appended reversal)")
    common(u)
    u.add_argument("object_id", nargs="?", help="undo this object's latest label")
    u.add_argument("--event", type=int, help="undo this event id")
    u.add_argument("--user")
    u.set_defaults(func=_undo)

    s = lsub.add_parser("show", help="counts and current labels, or a history")
    common(s)
    s.add_argument("--object", help="this object's history")
    s.add_argument("--since", type=int, help="the events after this event id")
    s.add_argument("--limit", type=int, default=20, help="current labels to print")
    s.add_argument("--json", metavar="OUT")
    s.set_defaults(func=_show)

    e = lsub.add_parser("export", help="current labels to CSV, VOTable or FITS")
    common(e)
    e.add_argument("--out", required=True, metavar="FILE", help=".csv, .vot/.xml or .fits")
    e.add_argument("--format", choices=["csv", "votable", "fits"])
    e.add_argument("--label", nargs="+", help="only these labels")
    e.set_defaults(func=_export)

    i = lsub.add_parser("import", help="labels from a CSV file (object_id,label[,ra,dec...])")
    common(i)
    i.add_argument("file")
    i.add_argument("--user", help="user for rows without a user column")
    i.add_argument("--source", choices=SOURCES, default="manual")
    i.add_argument("--all", action="store_true",
                   help="also add rows whose label is already current")
    i.set_defaults(func=_import)

    c = lsub.add_parser("classes", help="list label classes, or add user-defined ones")
    common(c)
    c.add_argument("--add", nargs="+", metavar="NAME")
    c.set_defaults(func=_classes)
