"""Faults while a job saves its state: a full disk and a damaged checkpoint. The job fails (or resumes) clearly,
and what it saved before is never lost. Real server, real job processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.jobs import checkpoints
from tests.processes import start_server, wait_until


@pytest.fixture
def server(tmp_path):
    running = start_server(tmp_path / "ws", "--cancel-grace", "5")
    try:
        yield running
    finally:
        running.stop()


def checkpoint_dir(server, job_id: int) -> Path:
    return server.settings.workspace / "jobs" / str(job_id) / "checkpoints"


def steps_saved(server, job_id: int) -> list[int]:
    return [int(p.name.split("-")[1]) for p in sorted(checkpoint_dir(server, job_id).glob("step-*"))]


def assert_fails_clearly_keeping_the_previous_checkpoint(server, job_id: int, full_at: int) -> None:
    client = server.client()
    ended = client.wait_for_job(job_id, timeout=120)
    assert ended.state == "failed"
    assert ended.error.startswith("disk full (No space left on device") and "Retry" in ended.error
    saved = steps_saved(server, job_id)
    assert saved and saved[-1] == full_at - 1  # nothing of the failed step, not even a temporary folder
    assert not list(checkpoint_dir(server, job_id).glob(".tmp-*"))
    state = json.loads((checkpoints.verify(checkpoint_dir(server, job_id) / f"step-{full_at - 1:09d}").path
                        / "state.json").read_text())
    assert state["step"] == full_at - 1


def test_a_full_disk_while_checkpointing_fails_the_job_and_keeps_the_previous_checkpoint(server):
    client = server.client()
    job = client.submit_job("selftest", {"steps": 8, "step_seconds": 0.02, "disk_full_at": 5})
    assert_fails_clearly_keeping_the_previous_checkpoint(server, job.id, full_at=5)

    # Space freed (the injected fault strikes the first attempt only): Retry resumes from step 4 and ends as an
    # uninterrupted run would.
    client.retry_job(job.id)
    done = client.wait_for_job(job.id, timeout=120)
    assert done.state == "succeeded" and done.result["sum"] == 36
    assert "resuming after step 4" in client.job_logs(job.id).text


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_fails_the_job_and_retry_resumes_once_space_is_freed(tmp_path):
    """The job's folder on a 12 MiB tmpfs, checkpoints of 3 MiB kept two at a time: a ballast file fills the disk
    mid-run. Needs permission to mount (root in CI's container); the injected fault above runs everywhere."""
    workspace = tmp_path / "ws"
    jobs_dir = workspace / "jobs"
    if not _mount_tmpfs(jobs_dir, "12m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected full disk is tested above")
    server = start_server(workspace, "--cancel-grace", "5")
    try:
        client = server.client()
        job = client.submit_job("selftest", {"steps": 40, "step_seconds": 0.25, "checkpoint_bytes": 3 * 2**20})
        wait_until(lambda: len(steps_saved(server, job.id)) >= 2, what="two checkpoints")
        ballast = jobs_dir / "ballast.bin"
        with ballast.open("wb") as f:  # fill what is left, so the next checkpoint cannot be written
            try:
                while True:
                    f.write(b"\0" * 2**16)
                    f.flush()
            except OSError:
                pass
        ended = client.wait_for_job(job.id, timeout=120)
        assert ended.state == "failed" and ended.error.startswith("disk full") and "Retry" in ended.error
        last = steps_saved(server, job.id)[-1]
        checkpoints.verify(checkpoint_dir(server, job.id) / f"step-{last:09d}")  # intact
        assert not list(checkpoint_dir(server, job.id).glob(".tmp-*"))

        ballast.unlink()
        client.retry_job(job.id)
        done = client.wait_for_job(job.id, timeout=180)
        assert done.state == "succeeded" and done.result["sum"] == 40 * 41 // 2
        assert f"resuming after step {last}" in client.job_logs(job.id).text
    finally:
        server.stop()
        subprocess.run(["umount", str(jobs_dir)], capture_output=True)


def test_a_damaged_checkpoint_is_refused_on_resume_and_the_previous_one_used(server):
    client = server.client()
    job = client.submit_job("selftest", {"steps": 200, "step_seconds": 0.03})
    wait_until(lambda: len(steps_saved(server, job.id)) >= 2 and steps_saved(server, job.id)[0] >= 3,
               what="two checkpoints")
    client.cancel_job(job.id)
    assert client.wait_for_job(job.id, timeout=30).state == "cancelled"
    older, newest = steps_saved(server, job.id)[-2:]
    damaged = checkpoint_dir(server, job.id) / f"step-{newest:09d}" / "state.json"
    damaged.write_text(json.dumps({"step": 10_000, "total": 0}))  # bit rot, or a half-synced copy

    client.retry_job(job.id)
    done = client.wait_for_job(job.id, timeout=120)
    assert done.state == "succeeded" and done.result["sum"] == 200 * 201 // 2  # not the damaged state's
    log = client.job_logs(job.id).text
    assert (f"refusing checkpoint step-{newest:09d}: state.json does not match its recorded SHA-256 (damaged); "
            "falling back to an older one") in log
    assert f"resuming after step {older}" in log
