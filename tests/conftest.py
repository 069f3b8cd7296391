from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import RunningServer, start_server

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DERMAE_SHARED_DATA", REPO.parent / "shared" / "data"))
HAM_SAMPLE = SHARED_DATA / "ham10000-sample"
DERMAMNIST = SHARED_DATA / "dermamnist.npz"


def needs(path: Path):
    """Skip (not fail) where the real data is absent: it is CC BY-NC and never in the repository."""
    return pytest.mark.skipif(not path.exists(), reason=f"real data not present at {path}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real engine server on a fresh workspace, stopped by PID afterwards."""
    running = start_server(tmp_path / "workspace")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module whose tests compare state before and after themselves."""
    running = start_server(tmp_path_factory.mktemp("shared") / "workspace")
    try:
        yield running
    finally:
        running.stop()
