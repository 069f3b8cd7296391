"""The job-process side without a server: checkpoints, metric batching, launch commands."""

import json
import sys
import threading

import pytest

from engine.client import ApiError, ServerNotFound
from engine.jobs import checkpoints
from engine.jobs.context import CANCELLED, JobContext, Reporter, Stopped
from engine.jobs.executor import describe_exit, job_command


def write_state(value):
    def write(folder):
        (folder / "state.json").write_text(json.dumps({"value": value}))
    return write


def test_checkpoints_keep_the_newest_and_load_the_latest(tmp_path):
    for step in range(1, 5):
        checkpoints.save(tmp_path, step, write_state(step), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000003", "step-000000004"]
    latest = checkpoints.latest(tmp_path)
    assert latest.step == 4 and json.loads((latest.path / "state.json").read_text()) == {"value": 4}


def test_a_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path):
    checkpoints.save(tmp_path, 1, write_state(1))
    newest = checkpoints.save(tmp_path, 2, write_state(2))
    (newest.path / "state.json").write_text('{"value": 999}')
    warnings = []
    latest = checkpoints.latest(tmp_path, warn=warnings.append)
    assert latest.step == 1
    assert "step-000000002: state.json does not match its recorded SHA-256" in warnings[0]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    checkpoints.save(tmp_path, 1, write_state(1))

    def disk_full(folder):
        (folder / "part").write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoints.save(tmp_path, 2, disk_full)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001"]
    assert checkpoints.latest(tmp_path).step == 1


class FakeClient:
    def __init__(self, fail_with=None):
        self.reports = []
        self.fail_with = fail_with

    def report_job(self, job_id, attempt, *, progress, metrics, alive):
        if self.fail_with:
            raise self.fail_with
        self.reports.append((progress, list(metrics), alive))
        return "running"


def test_metrics_logged_every_step_are_sent_in_batches():
    client = FakeClient()
    reporter = Reporter(client, 1, 1, interval=0.05, on_stop=lambda reason: None).start()
    for step in range(20_000):
        reporter.add_metric("loss", 1.0 / (step + 1), step)
    reporter.close()
    sent = [m for _, metrics, _ in client.reports for m in metrics]
    assert len(sent) == 20_000 and [m["step"] for m in sent] == list(range(20_000))
    assert len(client.reports) < 200  # batches, not one request per metric


def test_a_cancel_seen_in_a_report_stops_the_recipe(tmp_path):
    class Cancelling(FakeClient):
        def report_job(self, *args, **kwargs):
            return "cancelling"

    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path, workspace=tmp_path)
    reporter = Reporter(Cancelling(), 1, 1, on_stop=ctx.request_stop)
    reporter.flush()
    assert ctx.should_stop() and ctx.stop_reason == CANCELLED


def test_a_superseded_attempt_stops(tmp_path):
    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path, workspace=tmp_path)
    reporter = Reporter(FakeClient(ApiError(409, "attempt 1 is no longer running")), 1, 1,
                        on_stop=ctx.request_stop)
    reporter.flush()
    assert ctx.should_stop() and "no longer running" in ctx.stop_reason


def test_an_unreachable_engine_stops_the_job_after_the_orphan_timeout(tmp_path):
    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path, workspace=tmp_path)
    reporter = Reporter(FakeClient(ServerNotFound("gone")), 1, 1, orphan_timeout=0.0, on_stop=ctx.request_stop)
    reporter.add_metric("x", 1, 1)
    threading.Event().wait(0.01)
    reporter.flush()
    assert ctx.should_stop() and "unreachable" in ctx.stop_reason
    assert reporter._metrics  # kept, not dropped


def test_launch_commands():
    assert job_command(7, 1) == [sys.executable, "-m", "engine.worker", "7"]
    multi = job_command(7, 4)
    assert multi[1:3] == ["-m", "accelerate.commands.launch"]
    assert multi[multi.index("--num_processes") + 1] == "4" and multi[-3:] == ["-m", "engine.worker", "7"]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exited with code 3"


def test_recovery_leaves_a_job_that_ended_meanwhile_alone(tmp_path):
    from engine.store import Store

    store = Store(tmp_path / "db.duckdb")
    (job_id,) = store.jobs.create_many([{"kind": "selftest", "params": {}}])
    store.jobs.claim(job_id)
    store.jobs.finish(job_id, 1, "succeeded", result={"sum": 1})
    assert store.jobs.recover(job_id, "server stopped") == "succeeded"
    assert store.jobs.get(job_id)["state"] == "succeeded"
    store.close()


def test_recipes_resume_what_they_saved(tmp_path):
    import torch

    from engine.recipes.common import resume, save_state

    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path, workspace=tmp_path)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert resume(ctx, model=model, optimizer=optimizer) == {"step": 0}
    save_state(ctx, 7, model=model, optimizer=optimizer, best={"macro_f1": 0.5})
    saved = model.weight.detach().clone()

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), 1e-3)
    restored = resume(ctx, model=fresh, optimizer=fresh_optimizer)
    assert restored == {"step": 7, "best": {"macro_f1": 0.5}}
    assert torch.equal(fresh.weight, saved) and fresh_optimizer.state_dict()["state"]


def test_every_training_loop_checkpoints_on_schedule_at_the_end_and_when_asked_to_stop(tmp_path):
    """engine.recipes.common.end_of_step, the one end-of-step every recipe's loop calls."""
    from engine.recipes.common import end_of_step

    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path, workspace=tmp_path)
    saved = []
    for step in range(1, 8):
        end_of_step(ctx, step, 7, 3, saved.append)
    assert saved == [3, 6, 7]  # every 3 steps, and the last
    ctx.request_stop("SIGTERM")
    with pytest.raises(Stopped, match="stopped at step 4"):
        end_of_step(ctx, 4, 7, 3, saved.append)
    assert saved[-1] == 4  # checkpointed before stopping, off schedule
