"""`dermae backup` / `dermae restore`: a workspace with reviews, jobs and a dataset version, backed up through the CLI
while its server runs (a job still running), restored into a new workspace and served again: everything the API
shows comes back the same. And the refusals: a non-empty backup folder, a workspace in use, a damaged backup, a
newer schema, each with nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.backup import BackupProblem, restore_backup
from engine.client import ApiError
from engine.settings import Settings
from engine.store import LATEST_VERSION, Store
from tests.processes import seed_review_workspace, start_server, wait_until


def dermae(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DERMAE_WORKSPACE": str(workspace)}
    env.pop("DERMAE_API_URL", None)
    env.pop("DERMAE_API_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """One clear message and exit code 1, no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and all(w in done.stderr for w in words), done.stderr
    return done.stderr


def listing(folder: Path) -> list[str]:
    """Everything under `folder` and beside it: what a refusal must leave as it was."""
    return sorted(str(p.relative_to(folder.parent)) for p in folder.parent.rglob("*"))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A served workspace with decisions by three signed-in people (an undo among them), a finished selftest job
    with checkpoints, metrics and an artifact, a frozen dataset version, and a job still running."""
    server = start_server(tmp_path_factory.mktemp("original") / "ws", "--max-jobs", "2")  # both jobs at once
    try:
        server.ids = seed_review_workspace(server)
        for name, role in {"ann": "reviewer", "bob": "reviewer", "ada": "admin"}.items():
            server.client().add_user(name, f"{name}-password", role)
        ann, bob, ada = server.signed_in("ann"), server.signed_in("bob"), server.signed_in("ada")
        df, vasc = server.ids["df"], server.ids["vasc"]
        ann.decide(df[:4], "accept")
        ann.decide(df[4:5], "reject", ["artifact"], note="banding")
        bob.decide(df[:2], "accept")
        [taken_back] = bob.decide(vasc[:1], "reject", ["near_copy"])
        bob.undo(taken_back.seq)
        ada.decide(vasc[1:3], "accept")
        ada.set_review_policy(1)
        client = server.client()
        finishing = client.submit_job("selftest", {"steps": 4, "step_seconds": 0})
        queued = client.submit_job("selftest", {"steps": 100_000, "step_seconds": 0.5})
        server.done = client.wait_for_job(finishing.id)
        assert server.done.state == "succeeded"
        server.version = client.freeze_dataset("curated", "before the backup")
        server.running = wait_until(lambda: (job := client.job(queued.id)).state == "running"
                                    and (job.progress.done or 0) >= 2 and job, what="a job running, checkpointed")
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def backup(original, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backups") / "monday"
    done = dermae(original.settings.workspace, "backup", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(path) and "through its running server" in done.stderr
    return path


@pytest.fixture(scope="module")
def restored(backup, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("restored") / "ws"
    done = dermae(workspace, "restore", str(backup))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(workspace)
    server = start_server(workspace)
    yield server
    server.stop()


def test_the_backup_lists_every_file_with_its_hash_and_leaves_out_the_server_record(original, backup):
    manifest = json.loads((backup / "BACKUP.json").read_text())
    assert manifest["schema_version"] == LATEST_VERSION and manifest["format"] == "dermae-backup"
    assert manifest["counts"]["images"] == original.client().images(limit=1).total
    assert manifest["counts"]["datasets"] == 1 and manifest["counts"]["jobs"] == 3
    assert manifest["counts"]["reviews"] == 11 and manifest["counts"]["users"] == 3
    on_disk = {p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_file()} - {"BACKUP.json"}
    assert on_disk == set(manifest["files"])
    done = original.done.id
    for name in ("database/schema.sql", "workspace/api_token", f"workspace/{original.version.manifest_path}",
                 f"workspace/jobs/{done}/artifacts/summary.json", f"workspace/logs/job-{done}.log"):
        entry = manifest["files"][name]
        assert hashlib.sha256((backup / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert any(n.startswith(f"workspace/jobs/{done}/checkpoints/step-") for n in manifest["files"])
    assert "workspace/server.json" not in manifest["files"]
    assert not [n for n in manifest["files"] if n.endswith((".duckdb", ".wal")) or n.startswith("workspace/cache")]
    assert (backup / "workspace" / "api_token").stat().st_mode & 0o077 == 0  # the token stays private
    assert not [p for p in backup.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_people_sign_in_and_every_decision_is_there(original, restored):
    for name in ("ann", "bob", "ada"):
        assert restored.signed_in(name).me().name == name
    assert restored.token == original.token  # kept: scripts and job processes go on using it
    before, after = original.client(), restored.client()
    assert after.review_history(limit=1000) == before.review_history(limit=1000)
    assert after.review_policy() == before.review_policy()
    assert after.stats() == before.stats()
    ann_before, ann_after = original.signed_in("ann"), restored.signed_in("ann")
    assert ann_after.review_queue(label="df", limit=100) == ann_before.review_queue(label="df", limit=100)
    ann_after.decide(original.ids["df"][6:7], "accept")  # and work goes on: sequences continue where they were
    assert after.review_history(limit=1).items[0].seq == before.review_history(limit=1).items[0].seq + 1


def test_jobs_keep_their_states_metrics_logs_and_artifacts(original, restored):
    before, after = original.client(), restored.client()
    done = original.done.id
    assert after.job(done) == before.job(done)
    assert after.job_metrics(done) == before.job_metrics(done) and after.job_events(done) == before.job_events(done)
    assert after.job_logs(done).text == before.job_logs(done).text != ""
    [artifact] = after.job_artifacts(done)
    assert artifact == before.job_artifacts(done)[0]
    assert json.loads(after.artifact_bytes(done, artifact.id)) == original.done.result


def test_a_job_running_at_backup_time_resumes_in_the_copy_and_the_original_is_left_alone(original, restored):
    job_id, pid = original.running.id, original.running.pid
    # The copy's recovery re-queued it without touching the original's process (same machine, same job id).
    assert psutil.pid_exists(pid) and original.client().job(job_id).state == "running"
    after = restored.client()
    resumed = wait_until(lambda: (job := after.job(job_id)).state == "running" and job.pid and job,
                         what="the restored job running again")
    assert resumed.attempt == original.running.attempt + 1 and resumed.pid != pid
    wait_until(lambda: "resuming after step" in after.job_logs(job_id).text, what="the job resuming")


def test_dataset_versions_still_verify_and_export(original, restored, tmp_path):
    before, after = original.client(), restored.client()
    version = original.version
    assert after.datasets() == before.datasets() and after.dataset(version.id) == version
    assert after.dataset_manifest(version.id) == before.dataset_manifest(version.id)
    manifest = restored.settings.workspace / version.manifest_path
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == version.manifest_sha256
    root = after.export_dataset(version.id, tmp_path / "export")
    assert hashlib.sha256((root / "manifest.parquet").read_bytes()).hexdigest() == version.manifest_sha256
    assert sum(1 for p in root.rglob("*") if p.suffix == ".png") == version.n_images


def test_images_and_thumbnails_are_byte_identical(original, restored):
    before, after = original.client(), restored.client()
    ids = [i.id for i in before.images(limit=1000).items]
    assert len(ids) > 70 and [i.id for i in after.images(limit=1000).items] == ids
    assert after.images(limit=1000) == before.images(limit=1000)
    for image_id in ids[::7] + original.ids["df"][:3]:
        assert after.image_bytes(image_id) == before.image_bytes(image_id)
    assert after.thumbnails(ids[:100]) == before.thumbnails(ids[:100])


def test_backup_refuses_a_folder_that_is_not_empty_or_inside_the_workspace(original, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    before = listing(busy)
    refused(dermae(original.settings.workspace, "backup", str(busy)), "not empty", "new or empty folder")
    assert listing(busy) == before
    inside = original.settings.workspace / "backups"
    refused(dermae(original.settings.workspace, "backup", str(inside)), "outside the workspace")
    assert not inside.exists()


def test_the_backup_endpoint_writes_only_new_folders_outside_the_workspace_for_admins(original, tmp_path):
    client = original.client()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "db").mkdir()
    for path, status in (("relative/db", 422), (str(tmp_path / "busy"), 409), (str(tmp_path / "new"), 422),
                         (str(original.settings.workspace / "images"), 422), ("/" + "x" * 300, 422)):
        with pytest.raises(ApiError) as caught:
            client.backup_database(path)
        assert caught.value.status_code == status, (path, caught.value)
    with pytest.raises(ApiError) as caught:
        original.signed_in("ann").backup_database(tmp_path / "db")
    assert caught.value.status_code == 403
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "db"] and not any((tmp_path / "db").iterdir())
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


def test_restore_refuses_a_workspace_with_a_server_or_a_database(original, backup, tmp_path):
    workspace = original.settings.workspace
    before = sorted(p.name for p in workspace.iterdir())
    refused(dermae(workspace, "restore", str(backup)), f"pid {original.process.pid}", "new, empty folder")
    assert sorted(p.name for p in workspace.iterdir()) == before
    used = tmp_path / "used"
    Store(used / "dermae.duckdb").close()
    before = listing(used)
    refused(dermae(used, "restore", str(backup)), "already holds a database", "--workspace NEW")
    assert listing(used) == before


@pytest.mark.parametrize("damage", ["image changed", "database table changed", "file removed", "file added"])
def test_a_damaged_backup_is_refused_naming_the_file_and_nothing_is_written(backup, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(backup, copy)
    manifest = json.loads((copy / "BACKUP.json").read_text())
    image = next(n for n in manifest["files"] if n.startswith("workspace/images/"))
    if damage == "image changed":
        name = image
        data = bytearray((copy / name).read_bytes())
        data[-1] ^= 1
        (copy / name).write_bytes(bytes(data))
    elif damage == "database table changed":
        name = "database/reviews.parquet"
        with (copy / name).open("ab") as f:
            f.write(b"\0")
    elif damage == "file removed":
        name = image
        (copy / name).unlink()
    else:
        name = "workspace/images/extra.png"
        (copy / name).write_bytes(b"not from the backup")
    with pytest.raises(BackupProblem, match=rf"damaged backup: {re.escape(name)} .*nothing was restored"):
        restore_backup(copy, Settings.from_env(tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no workspace, nothing half-restored


def test_a_backup_of_a_newer_schema_is_refused(backup, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(backup, copy)
    manifest = json.loads((copy / "BACKUP.json").read_text())
    (copy / "BACKUP.json").write_text(json.dumps(manifest | {"schema_version": LATEST_VERSION + 1}))
    with pytest.raises(BackupProblem, match=r"made by a newer DerMAE .* Upgrade DerMAE, then restore"):
        restore_backup(copy, Settings.from_env(tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_without_a_server_an_older_schema_is_backed_up_as_it_is_and_upgraded_on_restore(tmp_path):
    """No server: the CLI reads the file itself, read-only (the source keeps its schema), and a job the backup
    caught running loses its process id, which belongs to the workspace backed up."""
    old = 3
    source = tmp_path / "old"
    store = Store(source / "dermae.duckdb", migrate_to=old)
    with store.db.transaction() as cur:  # a row as that schema had it (today's queries name later columns)
        [job] = cur.execute("INSERT INTO jobs (kind, params, state, attempt, pid, created_at, started_at) "
                            "VALUES ('selftest', '{\"steps\": 5}', 'running', 1, ?, now(), now()) RETURNING id",
                            [os.getpid()]).fetchone()
    store.close()
    done = dermae(source, "backup", str(tmp_path / "backup"))
    assert done.returncode == 0 and "no server running" in done.stderr, done.stderr
    assert json.loads((tmp_path / "backup" / "BACKUP.json").read_text())["schema_version"] == old
    store = Store(source / "dermae.duckdb", migrate_to=old)
    assert store.schema_version == old  # the backup did not migrate its source
    store.close()

    done = dermae(tmp_path / "new", "restore", str(tmp_path / "backup"))
    assert done.returncode == 0 and f"upgraded from schema {old}" in done.stderr, done.stderr
    store = Store(tmp_path / "new" / "dermae.duckdb")
    try:
        assert store.schema_version == LATEST_VERSION
        restored = store.jobs.get(job)
        assert restored["state"] == "running" and restored["pid"] is None and restored["params"] == {"steps": 5}
    finally:
        store.close()
