"""Queries on jobs and what they report: state transitions, events, metrics, artifacts.

State machine: queued → running → succeeded | failed | cancelled, with cancelling between running and cancelled.
Every transition is one conditional UPDATE under the write lock, so a job is claimed once and finished once.
Each report carries the attempt it comes from; reports of an older attempt (an orphan of a dead server) are
refused.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pyarrow as pa

from engine.store.db import Database, utc_now, where_given

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("running", "cancelling")

JOB_COLUMNS = ("id", "kind", "params", "state", "after", "pipeline_id", "pipeline_key", "attempt", "max_attempts",
               "num_processes", "heartbeat_timeout", "pid", "progress_done", "progress_total",
               "progress_message", "result", "error", "created_at", "started_at", "finished_at", "heartbeat_at",
               "resources", "slurm_job_id")


class UnknownJob(LookupError):
    pass


class JobConflict(RuntimeError):
    """The job is not in a state that allows what was asked."""


def _job(row: tuple) -> dict[str, Any]:
    job = dict(zip(JOB_COLUMNS, row, strict=True))
    job["params"] = json.loads(job["params"])
    job["result"] = json.loads(job["result"]) if job["result"] is not None else None
    job["after"] = list(job["after"] or [])
    job["resources"] = json.loads(job["resources"]) if job["resources"] is not None else {}
    return job


_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"


class JobQueries:
    def __init__(self, db: Database):
        self.db = db

    # submit -----------------------------------------------------------------------------------------------
    def create_many(self, specs: list[dict[str, Any]], pipeline_id: str | None = None) -> list[int]:
        """Insert jobs in one transaction. A spec's `after` holds job ids, or `after_keys` holds the
        `pipeline_key`s of specs earlier in the same list."""
        ids: list[int] = []
        by_key: dict[str, int] = {}
        with self.db.transaction() as cur:
            for spec in specs:
                after = list(spec.get("after", []))
                for key in spec.get("after_keys", []):
                    if key not in by_key:
                        raise ValueError(f"job {spec.get('pipeline_key')!r} waits on {key!r}, which is not "
                                         "an earlier job of the pipeline")
                    after.append(by_key[key])
                if after:
                    found = {r[0] for r in cur.execute("SELECT id FROM jobs WHERE list_contains(?, id)",
                                                       [after]).fetchall()}
                    missing = sorted(set(after) - found)
                    if missing:
                        raise UnknownJob(f"no job(s) {', '.join(map(str, missing))} to wait on")
                job_id = cur.execute(
                    "INSERT INTO jobs (kind, params, state, after, pipeline_id, pipeline_key, max_attempts, "
                    "num_processes, heartbeat_timeout, resources, created_at) "
                    "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [spec["kind"], json.dumps(spec.get("params", {})), after, pipeline_id,
                     spec.get("pipeline_key"), spec.get("max_attempts", 2), spec.get("num_processes", 1),
                     spec.get("heartbeat_timeout", 300.0), json.dumps(spec.get("resources") or {}), utc_now()],
                ).fetchone()[0]
                self._event(cur, job_id, 0, "queued", None)
                ids.append(job_id)
                if spec.get("pipeline_key"):
                    by_key[spec["pipeline_key"]] = job_id
        return ids

    # read -------------------------------------------------------------------------------------------------
    def get(self, job_id: int) -> dict[str, Any]:
        row = self.db.cursor().execute(f"{_SELECT} WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return _job(row)

    def list(self, *, state: str | None = None, kind: str | None = None, pipeline_id: str | None = None,
             limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        where, params = where_given(("state = $state", "state", state), ("kind = $kind", "kind", kind),
                                    ("pipeline_id = $pipeline", "pipeline", pipeline_id))
        cur = self.db.cursor()
        total = cur.execute(f"SELECT count(*) FROM jobs WHERE {where}", params).fetchone()[0]
        rows = cur.execute(f"{_SELECT} WHERE {where} ORDER BY id DESC LIMIT $limit OFFSET $offset",
                           params | {"limit": limit, "offset": offset}).fetchall()
        return total, [_job(r) for r in rows]

    def active(self) -> list[dict[str, Any]]:
        rows = self.db.cursor().execute(
            f"{_SELECT} WHERE state IN ('running', 'cancelling') ORDER BY id").fetchall()
        return [_job(r) for r in rows]

    def events(self, job_id: int) -> list[dict[str, Any]]:
        cur = self.db.cursor().execute(
            "SELECT seq, attempt, event, message, created_at FROM job_events WHERE job_id = ? ORDER BY seq",
            [job_id])
        return [dict(zip(("seq", "attempt", "event", "message", "created_at"), r, strict=True))
                for r in cur.fetchall()]

    # schedule ---------------------------------------------------------------------------------------------
    def fail_blocked(self) -> list[int]:
        """Queued jobs with an upstream that failed or was cancelled end as failed ("upstream failed"),
        down the whole chain."""
        failed: list[int] = []
        with self.db.transaction() as cur:
            while True:
                rows = cur.execute("""
                    SELECT j.id, min(u.id) FROM jobs j, unnest(j.after) AS a(up) JOIN jobs u ON u.id = a.up
                    WHERE j.state = 'queued' AND u.state IN ('failed', 'cancelled') GROUP BY j.id
                """).fetchall()
                if not rows:
                    return failed
                for job_id, upstream in rows:
                    message = f"upstream failed: job {upstream} did not succeed"
                    cur.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                                [message, utc_now(), job_id])
                    self._event(cur, job_id, 0, "failed", message)
                    failed.append(job_id)

    def runnable(self, limit: int) -> list[dict[str, Any]]:
        """Queued jobs whose upstream jobs all succeeded, oldest first."""
        rows = self.db.cursor().execute(f"""
            {_SELECT} WHERE state = 'queued' AND NOT EXISTS (
                SELECT 1 FROM unnest(after) AS a(up) JOIN jobs u ON u.id = a.up WHERE u.state <> 'succeeded')
            ORDER BY id LIMIT ?""", [limit]).fetchall()
        return [_job(r) for r in rows]

    def claim(self, job_id: int) -> dict[str, Any] | None:
        """queued → running with attempt + 1; None if someone else changed it first."""
        with self.db.transaction() as cur:
            now = utc_now()
            row = cur.execute(
                f"UPDATE jobs SET state = 'running', attempt = attempt + 1, started_at = ?, heartbeat_at = ?, "
                f"pid = NULL, slurm_job_id = NULL, error = NULL, finished_at = NULL "
                f"WHERE id = ? AND state = 'queued' "
                f"RETURNING {', '.join(JOB_COLUMNS)}", [now, now, job_id]).fetchone()
            if row is None:
                return None
            job = _job(row)
            self._event(cur, job_id, job["attempt"], "started", None)
            return job

    def set_pid(self, job_id: int, pid: int) -> None:
        with self.db.transaction() as cur:
            cur.execute("UPDATE jobs SET pid = ? WHERE id = ?", [pid, job_id])

    def set_slurm_job(self, job_id: int, attempt: int, slurm_job_id: str, message: str) -> None:
        """Record the Slurm job that runs this attempt, with an event saying where it was submitted."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE jobs SET slurm_job_id = ? WHERE id = ? AND attempt = ?",
                        [slurm_job_id, job_id, attempt])
            self._event(cur, job_id, attempt, "submitted", message)

    def note(self, job_id: int, attempt: int, event: str, message: str) -> None:
        """An event in the job's history from the engine's side (a scancel sent, a re-attach after a restart)."""
        with self.db.transaction() as cur:
            self._event(cur, job_id, attempt, event, message)

    def touch(self, job_id: int, attempt: int, message: str | None = None) -> None:
        """Count the job as alive (it waits in a cluster queue, or was just re-attached); with `message`, show it
        as the job's progress message."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE jobs SET heartbeat_at = ?, progress_message = coalesce(?, progress_message) "
                        "WHERE id = ? AND attempt = ? AND state IN ('running', 'cancelling')",
                        [utc_now(), message, job_id, attempt])

    # report (from the job process) ------------------------------------------------------------------------
    def _live(self, cur: Any, job_id: int, attempt: int) -> str:
        row = cur.execute("SELECT state, attempt FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        if row[1] != attempt or row[0] not in ACTIVE:
            raise JobConflict(f"job {job_id} attempt {attempt} is no longer running (state {row[0]}, "
                              f"attempt {row[1]})")
        return row[0]

    def assert_running(self, job_id: int, attempt: int) -> None:
        """Raise JobConflict unless `attempt` is the job's running attempt (before writing what it sent)."""
        self._live(self.db.cursor(), job_id, attempt)

    def report(self, job_id: int, attempt: int, *, progress: tuple[float, float, str | None] | None,
               metrics: list[dict[str, Any]], alive: bool) -> str:
        """Progress, a batch of metrics and a heartbeat in one transaction. Returns the job's state, so the
        process learns of a cancel request."""
        with self.db.transaction() as cur:
            state = self._live(cur, job_id, attempt)
            now = utc_now()
            if progress is not None:
                cur.execute("UPDATE jobs SET progress_done = ?, progress_total = ?, progress_message = ? "
                            "WHERE id = ?", [*progress, job_id])
            if alive:
                cur.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", [now, job_id])
            if metrics:
                table = pa.table({
                    "job_id": [job_id] * len(metrics), "attempt": [attempt] * len(metrics),
                    "name": [m["name"] for m in metrics], "step": [int(m["step"]) for m in metrics],
                    "value": [float(m["value"]) for m in metrics], "created_at": [now] * len(metrics),
                })
                cur.register("metric_rows", table)
                cur.execute("INSERT INTO metrics SELECT * FROM metric_rows")
                cur.unregister("metric_rows")
            return state

    def finish(self, job_id: int, attempt: int, state: str, *, result: Any = None, error: str | None = None) -> None:
        """The job process's own last word: succeeded, failed or cancelled."""
        if state not in TERMINAL:
            raise ValueError(f"a job finishes as one of {TERMINAL}, not {state!r}")
        with self.db.transaction() as cur:
            # A job that succeeds while being cancelled stays succeeded: the work is done, keep it.
            self._live(cur, job_id, attempt)
            cur.execute("UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ? WHERE id = ?",
                        [state, json.dumps(result) if result is not None else None, error, utc_now(), job_id])
            self._event(cur, job_id, attempt, state, error)

    def end(self, job_id: int, attempt: int, state: str, reason: str) -> bool:
        """The scheduler's word on a process that ended without reporting (killed, crashed, hung)."""
        with self.db.transaction() as cur:
            row = cur.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ? AND attempt = ? "
                              "AND state IN ('running', 'cancelling') RETURNING id",
                              [state, reason, utc_now(), job_id, attempt]).fetchone()
            if row:
                self._event(cur, job_id, attempt, state, reason)
            return row is not None

    def recover(self, job_id: int, reason: str) -> str:
        """After a server crash: re-queue a running job when attempts remain (it resumes from its checkpoint),
        else fail it. Returns the new state."""
        with self.db.transaction() as cur:
            job = _job(cur.execute(f"{_SELECT} WHERE id = ?", [job_id]).fetchone())
            if job["state"] not in ACTIVE:  # it reported its own end meanwhile: nothing to recover
                return job["state"]
            if job["state"] == "cancelling":
                new_state, message = "cancelled", f"{reason}; it was being cancelled"
            elif job["attempt"] < job["max_attempts"]:
                new_state, message = "queued", f"{reason}; re-queued for attempt {job['attempt'] + 1}"
            else:
                new_state, message = "failed", f"{reason}; no attempts left ({job['max_attempts']})"
            cur.execute("UPDATE jobs SET state = ?, error = ?, pid = NULL, finished_at = ? WHERE id = ?",
                        [new_state, None if new_state == "queued" else message,
                         None if new_state == "queued" else utc_now(), job_id])
            self._event(cur, job_id, job["attempt"], "recovered", message)
            return new_state

    def stale(self) -> list[dict[str, Any]]:
        """Running jobs whose process has not shown life within their heartbeat timeout."""
        now = utc_now()
        return [j for j in self.active()
                if j["heartbeat_at"] and now - j["heartbeat_at"] > timedelta(seconds=j["heartbeat_timeout"])]

    # user actions -----------------------------------------------------------------------------------------
    def request_cancel(self, job_id: int) -> str:
        with self.db.transaction() as cur:
            row = cur.execute("SELECT state, attempt FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise UnknownJob(f"no job {job_id}")
            state, attempt = row
            if state in TERMINAL:
                raise JobConflict(f"job {job_id} has already ended ({state})")
            new_state = "cancelled" if state == "queued" else "cancelling"
            cur.execute("UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?",
                        [new_state, utc_now() if new_state == "cancelled" else None, job_id])
            self._event(cur, job_id, attempt, "cancel requested" if new_state == "cancelling" else new_state, None)
            return new_state

    def retry(self, job_id: int) -> list[int]:
        """Re-queue a failed or cancelled job, and the jobs downstream that failed because of it."""
        with self.db.transaction() as cur:
            row = cur.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise UnknownJob(f"no job {job_id}")
            if row[0] not in ("failed", "cancelled"):
                raise JobConflict(f"job {job_id} is {row[0]}; only failed or cancelled jobs can be retried")
            requeued = [job_id]
            frontier = [job_id]
            while frontier:
                downstream = cur.execute(
                    "SELECT id FROM jobs WHERE list_has_any(after, ?) AND state = 'failed' "
                    "AND starts_with(error, 'upstream failed')", [frontier]).fetchall()
                frontier = [r[0] for r in downstream if r[0] not in requeued]
                requeued += frontier
            for jid in requeued:
                # a retry is a fresh budget of attempts on top of those used
                cur.execute("UPDATE jobs SET state = 'queued', error = NULL, result = NULL, finished_at = NULL, "
                            "max_attempts = attempt + greatest(max_attempts - attempt, 1) WHERE id = ?", [jid])
                self._event(cur, jid, 0, "retried", None if jid == job_id else f"with upstream job {job_id}")
            return requeued

    # metrics, artifacts, events ---------------------------------------------------------------------------
    def metrics(self, job_id: int, name: str | None = None) -> dict[str, list[tuple[int, float]]]:
        """Series by name: [(step, value)], last write per step wins (a resumed attempt may repeat steps)."""
        params: list[Any] = [job_id]
        extra = ""
        if name is not None:
            extra, params = " AND name = ?", [job_id, name]
        rows = self.db.cursor().execute(
            f"SELECT name, step, arg_max(value, (attempt, created_at)) FROM metrics WHERE job_id = ?{extra} "
            "GROUP BY name, step ORDER BY name, step", params).fetchall()
        series: dict[str, list[tuple[int, float]]] = {}
        for metric, step, value in rows:
            series.setdefault(metric, []).append((step, value))
        return series

    def add_artifact(self, job_id: int, attempt: int, kind: str, path: str, sha256: str, size: int) -> int:
        with self.db.transaction() as cur:
            self._live(cur, job_id, attempt)
            return cur.execute("INSERT INTO artifacts (job_id, kind, path, sha256, size_bytes, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                               [job_id, kind, path, sha256, size, utc_now()]).fetchone()[0]

    def artifacts(self, job_id: int) -> list[dict[str, Any]]:
        cols = ("id", "job_id", "kind", "path", "sha256", "size_bytes", "created_at")
        rows = self.db.cursor().execute(f"SELECT {', '.join(cols)} FROM artifacts WHERE job_id = ? ORDER BY id",
                                        [job_id]).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    @staticmethod
    def _event(cur: Any, job_id: int, attempt: int, event: str, message: str | None) -> None:
        cur.execute("INSERT INTO job_events (job_id, attempt, event, message, created_at) VALUES (?, ?, ?, ?, ?)",
                    [job_id, attempt, event, message, utc_now()])
