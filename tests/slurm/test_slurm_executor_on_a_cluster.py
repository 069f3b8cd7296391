"""The Slurm executor against a real single-node Slurm (slurmctld, slurmd and munge started by
deploy/slurm/local_cluster.py in a temporary folder): jobs go through sbatch, report progress over HTTP, are
cancelled through scancel, fail with Slurm's reason when killed from outside, and a restarted engine adopts a
running Slurm job instead of submitting it again. `make test-slurm` runs only these."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from engine.pipelines import generator_chain
from engine.profiles import load_profile
from tests.processes import start_server, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def slurm(cluster, *args: str) -> str:
    return subprocess.run(list(args), env={**os.environ, **cluster.env()}, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def slurm_state(cluster, slurm_id: str) -> dict[str, str]:
    line = slurm(cluster, "scontrol", "show", "job", "-o", slurm_id).strip()
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


@pytest.fixture
def engine(slurm_cluster, tmp_path):
    """An engine server with `--executor slurm` on the test cluster's partition."""
    server = start_server(tmp_path / "ws", "--executor", "slurm", "--partition", slurm_cluster.partition,
                          env=slurm_cluster.env())
    yield server
    server.stop()


def test_the_smoke_generator_chain_runs_through_sbatch(slurm_cluster, engine):
    client = engine.client()
    client.import_data("phantom", phantom_size=140)
    run = client.submit_pipeline(generator_chain(load_profile("smoke")))
    jobs = {j.pipeline_key: client.wait_for_job(j.id, timeout=900) for j in run.jobs}
    assert {k: j.state.value for k, j in jobs.items()} == dict.fromkeys(jobs, "succeeded"), \
        {k: j.error for k, j in jobs.items()}
    slurm_ids = {k: j.slurm_job_id for k, j in jobs.items()}
    assert all(slurm_ids.values()) and len(set(slurm_ids.values())) == len(jobs), slurm_ids  # one sbatch each
    for key, job in jobs.items():
        ended = wait_until(lambda j=job: (s := slurm_state(slurm_cluster, j.slurm_job_id))["JobState"]
                           not in ("RUNNING", "COMPLETING") and s, timeout=60, what="the process to exit")
        assert ended["JobState"] == "COMPLETED", key  # it reported, then exited 0
        assert ended["JobName"] == f"dermae-{tag(engine)}-{job.id}-1"
        events = [(e.event, e.message) for e in client.job_events(job.id)]
        assert ("submitted", f"submitted to Slurm as job {job.slurm_job_id}") in events
        assert job.progress.done == job.progress.total and job.progress.total  # reported over HTTP from the node
    ldm = jobs["ldm"]
    assert client.job_metrics(ldm.id)  # metrics came over HTTP too
    assert (engine.settings.workspace / "jobs" / str(ldm.id) / "slurm" / "attempt-1.sbatch").is_file()
    assert "===== attempt 1 (Slurm) =====" in client.job_logs(ldm.id).text


def tag(engine) -> str:
    from engine.jobs.slurm import SlurmExecutor

    return SlurmExecutor(engine.settings.workspace).tag


def running_selftest(client, steps: int = 600, **options):
    job = client.submit_job("selftest", {"steps": steps, "step_seconds": 0.1}, **options)
    return wait_until(lambda: (j := client.job(job.id)).progress.done and j.progress.done >= 3 and j, timeout=120,
                      what="the Slurm job to report steps")


def test_a_cancel_reaches_scancel_and_the_job_checkpoints_first(slurm_cluster, engine):
    client = engine.client()
    job = running_selftest(client)
    assert job.state == "running" and job.slurm_job_id
    assert slurm_state(slurm_cluster, job.slurm_job_id)["JobState"] == "RUNNING"
    client.cancel_job(job.id)
    ended = client.wait_for_job(job.id, timeout=120)
    assert ended.state == "cancelled", ended.error
    events = [(e.event, e.message) for e in client.job_events(job.id)]
    assert ("signalled", f"scancel --batch --signal=TERM {job.slurm_job_id}") in events
    wait_until(lambda: slurm_state(slurm_cluster, job.slurm_job_id)["JobState"] not in ("RUNNING", "COMPLETING"),
               timeout=60, what="the Slurm job to end")
    checkpoints = engine.settings.workspace / "jobs" / str(job.id) / "checkpoints"
    assert list(checkpoints.glob("step-*"))  # it stopped at a step boundary, checkpointed


def test_a_job_killed_by_scancel_from_outside_fails_with_slurms_reason_and_a_retry_resumes(slurm_cluster, engine):
    client = engine.client()
    job = running_selftest(client, steps=60)
    slurm(slurm_cluster, "scancel", job.slurm_job_id)  # an administrator, or the user in a shell
    ended = client.wait_for_job(job.id, timeout=120)
    assert ended.state == "failed"
    assert f"Slurm job {job.slurm_job_id} ended CANCELLED" in ended.error and "scancel from outside" in ended.error
    step = json.loads(sorted((engine.settings.workspace / "jobs" / str(job.id) / "checkpoints").glob("step-*"))[-1]
                      .joinpath("state.json").read_text())["step"]
    retried = client.wait_for_job(client.retry_job(job.id).id, timeout=180)
    assert retried.state == "succeeded" and retried.result == {"sum": 60 * 61 // 2, "steps": 60}
    assert retried.slurm_job_id != job.slurm_job_id  # a new attempt is a new Slurm job
    assert f"resuming after step {step}" in client.job_logs(job.id).text or step == 0


def test_a_restarted_engine_adopts_the_running_slurm_job_instead_of_submitting_it_again(slurm_cluster, tmp_path):
    workspace = tmp_path / "ws"
    args = ("--executor", "slurm", "--partition", slurm_cluster.partition)
    server = start_server(workspace, *args, env=slurm_cluster.env())
    client = server.client()
    job = running_selftest(client, steps=80)
    server.stop()  # a graceful stop leaves Slurm's jobs running
    assert slurm_state(slurm_cluster, job.slurm_job_id)["JobState"] == "RUNNING"
    port = server.url.rsplit(":", 1)[1]  # back at the URL the job knows, as a fixed --port would be
    restarted = start_server(workspace, *args, "--port", port, env=slurm_cluster.env())
    try:
        client = restarted.client()
        adopted = client.job(job.id)
        assert adopted.state == "running" and adopted.slurm_job_id == job.slurm_job_id and adopted.attempt == 1
        ended = client.wait_for_job(job.id, timeout=180)
        assert ended.state == "succeeded", ended.error
        assert ended.attempt == 1 and ended.result == {"sum": 80 * 81 // 2, "steps": 80}
        events = [e.event for e in client.job_events(job.id)]
        assert events.count("submitted") == 1 and "adopted" in events
        names = slurm(slurm_cluster, "squeue", "-h", "-t", "all", "-o", "%j").split()
        assert names.count(f"dermae-{tag(restarted)}-{job.id}-1") == 1  # never submitted twice
    finally:
        restarted.stop()


def test_several_processes_run_as_srun_accelerate_launch_with_one_writer(slurm_cluster, engine):
    client = engine.client()
    job = client.wait_for_job(client.submit_job("selftest", {"steps": 4, "step_seconds": 0.05}, num_processes=2).id,
                              timeout=300)
    assert job.state == "succeeded", job.error
    log = client.job_logs(job.id).text
    assert "rank 0/2" in log and "rank 1/2" in log
    script = (engine.settings.workspace / "jobs" / str(job.id) / "slurm" / "attempt-1.sbatch").read_text()
    assert "exec srun" in script and "accelerate.commands.launch" in script
    checkpoints = sorted((engine.settings.workspace / "jobs" / str(job.id) / "checkpoints").glob("step-*"))
    writers = {json.loads((c / "MANIFEST.json").read_text())["writer"]["rank"] for c in checkpoints}
    assert checkpoints and writers == {0}  # rank 1 computed but never wrote
    assert log.count("checkpoint") and log.count("written by rank 0") == 4


def test_slurms_time_limit_fails_the_job_with_its_reason_and_a_retry_resumes_from_the_checkpoint(slurm_cluster,
                                                                                                 engine):
    """Slurm ends a job at its time limit (SIGTERM, then SIGKILL after KillWait): the job checkpoints on SIGTERM."""
    client = engine.client()
    job = running_selftest(client, steps=900, resources={"time_limit_min": 1})  # 90 s of work, 60 s allowed
    assert "#SBATCH --time=1" in (engine.settings.workspace / "jobs" / str(job.id) / "slurm" / "attempt-1.sbatch"
                                  ).read_text()
    ended = client.wait_for_job(job.id, timeout=240)
    assert ended.state == "failed"
    assert f"Slurm job {job.slurm_job_id} ended TIMEOUT: it reached its time limit" in ended.error
    checkpoints = sorted((engine.settings.workspace / "jobs" / str(job.id) / "checkpoints").glob("step-*"))
    step = json.loads(checkpoints[-1].joinpath("state.json").read_text())["step"]
    assert step >= 300  # it ran most of its minute and checkpointed when told to stop
    retried = client.wait_for_job(client.retry_job(job.id).id, timeout=240)
    assert retried.state == "succeeded", retried.error
    assert retried.result == {"sum": 900 * 901 // 2, "steps": 900}
    assert f"resuming after step {step}" in client.job_logs(job.id).text


def test_a_job_waiting_in_slurms_queue_says_why_and_a_cancel_takes_it_out(slurm_cluster, tmp_path):
    server = start_server(tmp_path / "ws", "--executor", "slurm", "--partition", slurm_cluster.partition,
                          "--max-jobs", "2", env=slurm_cluster.env())
    try:
        client = server.client()
        node = slurm(slurm_cluster, "scontrol", "show", "node", "-o").split()
        cpus = int(dict(item.split("=", 1) for item in node if "=" in item)["CPUTot"])
        hog = running_selftest(client, resources={"cpus_per_task": cpus})  # every CPU of the one node
        queued = client.submit_job("selftest", {"steps": 5, "step_seconds": 0.1}, resources={"cpus_per_task": 1})
        # Slurm's reason shows once its scheduler has looked at the job (Reason=None before)
        waiting = wait_until(lambda: "(pending: Resources)" in ((j := client.job(queued.id)).progress.message
                                                                or "") and j, timeout=60, what="Slurm's reason")
        assert waiting.state == "running" and waiting.slurm_job_id  # submitted: Slurm holds it
        assert waiting.progress.message == f"waiting in Slurm's queue as job {waiting.slurm_job_id} (pending: " \
                                           "Resources)"
        assert slurm_state(slurm_cluster, waiting.slurm_job_id)["JobState"] == "PENDING"
        client.cancel_job(queued.id)
        assert client.wait_for_job(queued.id, timeout=60).state == "cancelled"
        events = [(e.event, e.message) for e in client.job_events(queued.id)]
        assert ("signalled", f"scancel {waiting.slurm_job_id}") in events  # no process yet: no SIGTERM to send
        assert slurm_state(slurm_cluster, waiting.slurm_job_id)["JobState"] == "CANCELLED"
        client.cancel_job(hog.id)
        assert client.wait_for_job(hog.id, timeout=120).state == "cancelled"
    finally:
        server.stop()
