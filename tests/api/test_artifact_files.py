"""GET /jobs/{id}/artifacts/{artifact_id}/file: the bytes of a job's registered files, and nothing else; and
POST /models/{id}/serve is an admin's, not a reviewer's."""

import json

import pytest

from engine.client import ApiError
from tests.factories import image_bytes
from tests.processes import wait_until


def running_selftest(client):
    """A selftest job that runs until cancelled, so the test can register artifacts as that job would."""
    queued = client.submit_job("selftest", {"steps": 100_000, "step_seconds": 0.05})
    return wait_until(lambda: (job := client.job(queued.id)).state == "running" and job, what="selftest running")


def refused(call, status: int) -> str:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    return caught.value.detail


def test_a_jobs_files_are_served_byte_exact_and_nothing_else(server, tmp_path):
    client = server.client()
    done = client.wait_for_job(client.submit_job("selftest", {"steps": 1, "step_seconds": 0}).id)
    [summary] = client.job_artifacts(done.id)
    assert json.loads(client.artifact_bytes(done.id, summary.id)) == done.result

    job = running_selftest(client)
    folder = server.settings.workspace / "jobs" / str(job.id) / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    grid = image_bytes(7, "PNG", (64, 32))
    (folder / "samples-step0000005.png").write_bytes(grid)
    (folder / "model").mkdir()
    (folder / "model" / "weights.bin").write_bytes(b"weights")
    (folder / "moved.json").write_text("{}")
    secret = tmp_path / "outside.txt"  # outside the workspace
    secret.write_text("not the engine's to give")

    def register(name: str, kind: str):
        return client.add_artifact(job.id, job.attempt, f"jobs/{job.id}/artifacts/{name}", kind)

    png, model, moved = register("samples-step0000005.png", "sample_grid"), register("model", "model"), \
        register("moved.json", "evaluation")
    client.cancel_job(job.id)
    response = client._request("GET", f"/jobs/{job.id}/artifacts/{png.id}/file")
    assert response.content == grid and response.headers["content-type"] == "image/png"
    assert client.artifact_bytes(job.id, png.id) == grid

    # another job's artifact id under this job: 404, though the file exists
    assert "has no artifact" in refused(lambda: client.artifact_bytes(job.id, summary.id), 404)
    refused(lambda: client.artifact_bytes(job.id, 10**6), 404)
    refused(lambda: client.artifact_bytes(10**6, png.id), 404)
    # a registered file that now leads outside the workspace (replaced by a link): 404, its bytes never sent
    (folder / "moved.json").unlink()
    (folder / "moved.json").symlink_to(secret)
    assert "not in the workspace" in refused(lambda: client.artifact_bytes(job.id, moved.id), 404)
    # folders are not served
    assert "is a folder" in refused(lambda: client.artifact_bytes(job.id, model.id), 409)


def test_only_an_admin_changes_the_served_model(server):
    client = server.client()
    client.add_user("rita", "rita-password", "reviewer")
    reviewer = server.client(token=None)
    reviewer.login("rita", "rita-password")
    # no model exists: the reviewer is refused for the role before anything is looked up
    assert "needs an admin" in refused(lambda: reviewer.serve_model(1), 403)
    assert "no model 1" in refused(lambda: client.serve_model(1), 404)
