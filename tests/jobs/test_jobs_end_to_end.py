"""The job machinery with a real server and real job processes."""

import json
import os
import signal

import psutil
import pytest

from engine.client import ApiError
from engine.schemas import PipelineStep, PipelineSubmit
from tests.processes import start_server, wait_until


@pytest.fixture
def jobs_server(tmp_path):
    running = start_server(tmp_path / "ws", "--max-jobs", "2", "--cancel-grace", "5")
    try:
        yield running
    finally:
        running.stop()


def test_submit_run_succeed_with_metrics_progress_and_artifact(jobs_server):
    client = jobs_server.client()
    job = client.submit_job("selftest", {"steps": 6, "step_seconds": 0.05})
    assert job.state == "queued" and job.attempt == 0
    done = client.wait_for_job(job.id, timeout=60)
    assert done.state == "succeeded", done.error
    assert done.result == {"sum": 21, "steps": 6}
    assert (done.progress.done, done.progress.total) == (6, 6)
    (series,) = client.job_metrics(job.id, "total")
    assert series.steps == [1, 2, 3, 4, 5, 6] and series.values == [1, 3, 6, 10, 15, 21]
    (artifact,) = client.job_artifacts(job.id)
    assert artifact.kind == "summary" and artifact.path == f"jobs/{job.id}/artifacts/summary.json"
    assert [e.event for e in client.job_events(job.id)] == ["queued", "started", "succeeded"]
    assert f"job {job.id} succeeded" in client.job_logs(job.id).text


def test_parameters_are_validated_per_kind(jobs_server):
    client = jobs_server.client()
    with pytest.raises(ApiError, match="steps: Input should be greater than or equal to 0") as info:
        client.submit_job("selftest", {"steps": -1})
    assert info.value.status_code == 422
    with pytest.raises(ApiError, match="unknown job kind 'train_gpt'"):
        client.submit_job("train_gpt")
    with pytest.raises(ApiError, match="Extra inputs are not permitted"):
        client.submit_job("selftest", {"stpes": 3})
    with pytest.raises(ApiError, match="no job"):
        client.submit_job("selftest", after=[999])
    kinds = {k.name: k for k in client.job_kinds()}
    assert "steps" in kinds["selftest"].params_schema["properties"]


def test_a_failing_recipe_fails_with_its_traceback_in_the_log(jobs_server):
    client = jobs_server.client()
    job = client.wait_for_job(client.submit_job("selftest", {"steps": 5, "step_seconds": 0, "fail_at": 3}).id)
    assert job.state == "failed"
    assert job.error == "RuntimeError: selftest failing at step 3 as asked (fail_at=3)"
    log = client.job_logs(job.id).text
    assert "Traceback (most recent call last)" in log and "selftest.py" in log


def test_cancel_mid_run_checkpoints_and_ends_cancelled(jobs_server):
    client = jobs_server.client()
    job = client.submit_job("selftest", {"steps": 150, "step_seconds": 0.03})
    wait_until(lambda: (client.job(job.id).progress.done or 0) >= 3, what="3 steps")
    pid = client.job(job.id).pid
    assert client.cancel_job(job.id).state in ("cancelling", "cancelled")
    ended = client.wait_for_job(job.id, timeout=30)
    assert ended.state == "cancelled"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    checkpoints = list((jobs_server.settings.workspace / "jobs" / str(job.id) / "checkpoints").glob("step-*"))
    assert checkpoints
    with pytest.raises(ApiError) as again:
        client.cancel_job(job.id)
    assert again.value.status_code == 409

    # a retry resumes from the checkpoint and ends with the uninterrupted result
    client.retry_job(job.id)
    resumed = client.wait_for_job(job.id, timeout=120)
    assert resumed.state == "succeeded" and resumed.result["sum"] == 150 * 151 // 2
    assert resumed.attempt == 2 and "resuming after step" in client.job_logs(job.id).text


def test_a_queued_job_is_cancelled_at_once(jobs_server):
    client = jobs_server.client()
    blocker = client.submit_job("selftest", {"steps": 100, "step_seconds": 0.05})
    waiting = client.submit_job("selftest", {"steps": 1}, after=[blocker.id])
    assert client.cancel_job(waiting.id).state == "cancelled"
    client.cancel_job(blocker.id)


def test_kill_9_of_the_job_process_fails_it_with_the_signal_and_log_tail(jobs_server):
    client = jobs_server.client()
    job = client.submit_job("selftest", {"steps": 500, "step_seconds": 0.05})
    wait_until(lambda: (client.job(job.id).progress.done or 0) >= 2, what="2 steps")
    os.kill(client.job(job.id).pid, signal.SIGKILL)
    ended = client.wait_for_job(job.id, timeout=30)
    assert ended.state == "failed"
    assert "killed by SIGKILL" in ended.error and "--- log tail ---" in ended.error
    assert f"job {job.id} (selftest) attempt 1" in ended.error


def test_a_hung_job_is_ended_by_the_heartbeat_timeout(jobs_server):
    client = jobs_server.client()
    job = client.submit_job("selftest", {"steps": 10, "step_seconds": 0, "hang_at": 2}, heartbeat_timeout=3)
    ended = client.wait_for_job(job.id, timeout=60)
    assert ended.state == "failed" and "no heartbeat for 3s" in ended.error
    assert "hanging at step 2" in ended.error


def test_chains_run_in_order_and_an_upstream_failure_fails_what_waits(jobs_server):
    client = jobs_server.client()
    run = client.submit_pipeline(PipelineSubmit(name="chain", steps=[
        PipelineStep(key="a", kind="selftest", params={"steps": 2, "step_seconds": 0.05}),
        PipelineStep(key="b", kind="selftest", params={"steps": 2, "step_seconds": 0.05}, after_keys=["a"]),
        PipelineStep(key="c", kind="selftest", params={"steps": 2}, after_keys=["b"]),
    ]))
    a, b, c = (client.wait_for_job(j.id) for j in run.jobs)
    assert [j.state for j in (a, b, c)] == ["succeeded"] * 3
    assert a.finished_at <= b.started_at and b.finished_at <= c.started_at
    assert {j.pipeline_id for j in client.pipeline(run.id).jobs} == {run.id}

    broken = client.submit_pipeline(PipelineSubmit(name="broken", steps=[
        PipelineStep(key="a", kind="selftest", params={"steps": 3, "fail_at": 2, "step_seconds": 0}),
        PipelineStep(key="b", kind="selftest", params={"steps": 1}, after_keys=["a"]),
        PipelineStep(key="c", kind="selftest", params={"steps": 1}, after_keys=["b"]),
    ]))
    a, b, c = (client.wait_for_job(j.id) for j in broken.jobs)
    assert a.state == b.state == c.state == "failed"
    assert b.error == f"upstream failed: job {a.id} did not succeed"
    assert c.error == f"upstream failed: job {b.id} did not succeed"
    assert b.attempt == 0 and c.attempt == 0  # never started


def test_pipeline_keys_must_name_earlier_steps(jobs_server):
    with pytest.raises(ApiError, match="waits on 'z'"):
        jobs_server.client().submit_pipeline(PipelineSubmit(name="bad", steps=[
            PipelineStep(key="a", kind="selftest", after_keys=["z"])]))
    assert jobs_server.client().jobs().total == 0  # nothing of the pipeline was created


def intervals_overlap_max(jobs):
    events = sorted([(j.started_at, 1) for j in jobs] + [(j.finished_at, -1) for j in jobs],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_the_concurrency_limit_holds(jobs_server):
    client = jobs_server.client()
    ids = [client.submit_job("selftest", {"steps": 4, "step_seconds": 0.1}).id for _ in range(6)]
    jobs = [client.wait_for_job(i, timeout=120) for i in ids]
    assert all(j.state == "succeeded" for j in jobs)
    assert intervals_overlap_max(jobs) == 2


@pytest.mark.slow
def test_200_jobs_submitted_at_once_all_end_once(tmp_path):
    server = start_server(tmp_path / "ws", "--max-jobs", "4")
    try:
        client = server.client()
        ids = [client.submit_job("selftest", {"steps": 1, "step_seconds": 0}).id for _ in range(200)]
        assert len(set(ids)) == 200
        jobs = [client.wait_for_job(i, timeout=600) for i in ids]
        assert [j.state for j in jobs].count("succeeded") == 200
        assert all(j.attempt == 1 and j.result == {"sum": 1, "steps": 1} for j in jobs)
        for job_id in ids:
            events = [e.event for e in client.job_events(job_id)]
            assert events.count("started") == 1 and events[-1] == "succeeded"
        assert intervals_overlap_max(jobs) <= 4
    finally:
        server.stop()


@pytest.mark.slow
def test_kill_9_of_the_server_then_restart_resumes_from_the_checkpoint(tmp_path):
    workspace = tmp_path / "ws"
    server = start_server(workspace)
    client = server.client()
    job = client.submit_job("selftest", {"steps": 40, "step_seconds": 0.1})
    wait_until(lambda: (client.job(job.id).progress.done or 0) >= 5, what="5 steps")
    orphan_pid = client.job(job.id).pid
    server.stop(signal.SIGKILL)

    restarted = start_server(workspace)
    try:
        client = restarted.client()
        assert not psutil.pid_exists(orphan_pid) or psutil.Process(orphan_pid).status() == psutil.STATUS_ZOMBIE
        ended = client.wait_for_job(job.id, timeout=120)
        assert ended.state == "succeeded", ended.error
        assert ended.result == {"sum": 40 * 41 // 2, "steps": 40}  # the same as an uninterrupted run
        assert ended.attempt == 2
        log = client.job_logs(job.id).text
        resumed_after = int(log.split("resuming after step ")[1].split()[0])
        assert resumed_after >= 5
        events = [(e.event, e.attempt) for e in client.job_events(job.id)]
        assert ("recovered", 1) in events and ("started", 2) in events
    finally:
        restarted.stop()


@pytest.mark.slow
def test_a_job_with_no_attempts_left_fails_after_a_server_crash(tmp_path):
    workspace = tmp_path / "ws"
    server = start_server(workspace)
    client = server.client()
    job = client.submit_job("selftest", {"steps": 100, "step_seconds": 0.1}, max_attempts=1)
    wait_until(lambda: client.job(job.id).state == "running", what="running")
    server.stop(signal.SIGKILL)
    restarted = start_server(workspace)
    try:
        ended = restarted.client().job(job.id)
        assert ended.state == "failed" and "no attempts left (1)" in ended.error
    finally:
        restarted.stop()


@pytest.mark.slow
def test_several_processes_run_under_accelerate_and_rank_0_reports(jobs_server):
    client = jobs_server.client()
    job = client.wait_for_job(client.submit_job("selftest", {"steps": 3, "step_seconds": 0.05},
                                                num_processes=2).id, timeout=120)
    assert job.state == "succeeded", job.error
    log = client.job_logs(job.id).text
    assert "rank 0/2" in log and "rank 1/2" in log
    assert json.loads((jobs_server.settings.workspace / "jobs" / str(job.id) / "artifacts" /
                       "summary.json").read_text()) == {"sum": 6, "steps": 3}
