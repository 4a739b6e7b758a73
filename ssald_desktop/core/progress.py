"""Driving core generators: the core's long work yields progress and returns a result."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def run_to_end(gen: Generator[Any, None, R], callback: Callable[[Any], Any] | None = None) -> R:
    """Drive a progress generator to the end and return its value.

    ``callback(progress)`` is called after each step (a CLI progress line, a test probe).
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(p)
