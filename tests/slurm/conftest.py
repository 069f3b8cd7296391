"""A real single-node Slurm for the tests in this folder, started once and stopped at the end."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch")


def load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", REPO / "deploy" / "slurm" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        reason = f"Slurm is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
        if os.environ.get("DERMAE_REQUIRE_SLURM") == "1":  # `make test` installs it: there, absence is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    local_cluster = load_local_cluster()
    base = tmp_path_factory.mktemp("slurm")
    cluster = local_cluster.start(base)
    try:
        yield cluster
    finally:
        local_cluster.stop(base)
