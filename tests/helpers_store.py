"""A SQLite MLflow store shared by a test module: creating one costs seconds (schema
migrations) while runs and registered models in it cost milliseconds; tests that keep
their names unique share it. Import both fixtures into the test module."""

from __future__ import annotations

import pytest
from conftest import _end_runs, _use_tracking_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def tracked(store, monkeypatch, tmp_path):
    """The module's store for one test; the working folder is the test's own (a SQLite
    store's default artifact root is ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    _use_tracking_store(store, monkeypatch)
    yield store
    _end_runs()
