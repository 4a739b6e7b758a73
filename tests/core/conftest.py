"""Fixtures shared by the core tests: one small indexed embedding store per test module."""

from __future__ import annotations

import pytest

from tests.core.test_embeddings import indexed_store


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def store_dir(base):
    return indexed_store(base)
