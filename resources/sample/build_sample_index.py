"""Rebuild the sample survey's galaxies, cutouts and similarity index from its frames.

Run from the repository root (it takes about a minute)::

    .venv/bin/python resources/sample/build_sample_index.py

What it does, with the product's own commands (nothing here is special to the sample):

1. ``ssald-cli sources``: offline galaxy detection in the r band of field 2820-3-122
   (photutils segmentation, stars separated against the frame's stellar locus), written to
   ``galaxies.csv``;
2. ``ssald-cli mine --mirror``: 64 x 64 five-band cutouts and Lupton RGB composites of those
   galaxies into HDF5 shards under ``cutouts/``;
3. ``ssald-cli embed`` with the bundled default encoder, then ``ssald-cli index``: the embedding
   store and its faiss index under ``index/``.

The store's ``source`` column is rewritten relative to the store folder, so that the bundle
works wherever the repository or the installed app lives (the reader resolves a relative
source against the store folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIELD = HERE / "frames" / "2820-3-122"


def _cli(*args: str) -> None:
    from ssald_desktop.cli import main

    print("ssald-cli", " ".join(args), flush=True)
    status = main(list(args))
    if status:
        raise SystemExit(f"ssald-cli {args[0]} failed with status {status}")


def relativise_sources(store: Path) -> int:
    """Make a store relocatable: sources and encoder path relative to the store folder."""
    db = sqlite3.connect(store / "objects.sqlite")
    rows = db.execute("SELECT row, source FROM objects").fetchall()
    for row, source in rows:
        p = Path(source)
        if p.is_absolute():
            db.execute("UPDATE objects SET source = ? WHERE row = ?",
                       (os.path.relpath(p, store), row))
    db.commit()
    db.close()
    header_path = store / "store.json"
    header = json.loads(header_path.read_text())
    header["encoder_path"] = os.path.relpath(header["encoder_path"], store)
    header["title"] = "Sample survey 2820-3-122"
    header_path.write_text(json.dumps(header, indent=2) + "\n")
    index_path = store / "index.json"
    meta = json.loads(index_path.read_text())
    meta["store"] = "."
    index_path.write_text(json.dumps(meta, indent=2) + "\n")
    return len(rows)


def main() -> int:
    """Build galaxies.csv, cutouts/ and index/ beside this script."""
    sys.path.insert(0, str(REPO))
    for name in ("cutouts", "index"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    _cli("sources", "--field", str(FIELD), "--csv", str(HERE / "galaxies.csv"))
    _cli("mine", "--csv", str(HERE / "galaxies.csv"), "--mirror", str(HERE / "frames"),
         "--out", str(HERE / "cutouts"), "--workers", "1")
    _cli("embed", "--shards", str(HERE / "cutouts"), "--out", str(HERE / "index"), "--quiet")
    _cli("index", "--store", str(HERE / "index"), "--quiet")
    n = relativise_sources(HERE / "index")
    print(f"sample index: {n} galaxies in {HERE / 'index'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
