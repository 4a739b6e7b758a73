"""TensorFlow work for the desktop app, run in its TensorFlow helper process.

The GUI never imports TensorFlow itself: loading it (a 3 to 4 s import, much of it in C code
that holds the GIL) and running the encoder stalled the event loop for up to half a second.
These module-level functions run in a :class:`~ssald_desktop.core.child.ChildProcess` started
on first use and kept warm; the Searchers they open (index, encoder) stay loaded between calls.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

#: Modules the TensorFlow helper process imports as soon as it starts.
WARM_MODULES = ("tensorflow", "keras", "model.export", "ssald_desktop.core.query")

_SEARCHERS: dict[str, Any] = {}


def searcher(folder: str | Path) -> Any:
    """The :class:`~ssald_desktop.core.query.Searcher` of an index folder, opened once."""
    from ssald_desktop.core.query import Searcher

    key = str(folder)
    if key not in _SEARCHERS:
        _SEARCHERS.clear()  # one index at a time
        _SEARCHERS[key] = Searcher(key)
    return _SEARCHERS[key]


def search(folder: str, files: Sequence[str], objects: Sequence[str], cutouts: Sequence[Any],
           negative_files: Sequence[str], negative_objects: Sequence[str],
           negative_cutouts: Sequence[Any], k: int,
           combine: str) -> tuple[Any, list[Any]]:
    """Search an index and read the results' thumbnails: ``(SearchResult, images)``."""
    s = searcher(folder)
    result = s.search(files=files, objects=objects, cutouts=cutouts,
                      negative_files=negative_files, negative_objects=negative_objects,
                      negative_cutouts=negative_cutouts, k=k, combine=combine)
    return result, s.store.object_images([h.id for h in result.hits])


def encode_images(source: str, store: str, encoder: str, fmt: str = "auto",
                  batch_size: int = 64) -> Generator[Any, None, dict[str, Any]]:
    """Encode an image folder or shards into a store (see :func:`embeddings.encode`)."""
    from ssald_desktop.core.embeddings import encode

    return (yield from encode(source, store, encoder, fmt=fmt, batch_size=batch_size))
