"""The scheduler inside the engine server: claims queued jobs, runs each in its own process, watches them.

One thread, one loop, every `poll_interval` seconds:
  1. queued jobs whose upstream failed end as failed;
  2. processes that exited are matched to their jobs (a process that died without reporting fails its job
     with the signal and the tail of its log);
  3. cancel requests become SIGTERM, then SIGKILL after the grace period;
  4. running jobs that showed no life within their heartbeat timeout are killed and failed;
  5. free slots (max_concurrent) are filled with the oldest runnable jobs, each claimed atomically.
At start-up, jobs left running by a previous server are recovered: the executor adopts those it can still watch
(a Slurm job outlives the engine), the others' orphaned processes are stopped and they are re-queued (resuming
from their checkpoints) while attempts remain.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.executor import Ended, Executor, ExecutorUnusable, Launched, LocalExecutor
from engine.settings import Settings
from engine.store import Store


@dataclass(frozen=True)
class SchedulerConfig:
    max_concurrent: int = 1
    poll_interval: float = 0.2
    cancel_grace: float = 10.0


def log_path(settings: Settings, job_id: int) -> Path:
    return settings.logs_dir / f"job-{job_id}.log"


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Scheduler:
    def __init__(self, store: Store, settings: Settings, *, api_url: str, api_token: str,
                 config: SchedulerConfig = SchedulerConfig(), executor: Executor | None = None):
        self.store = store
        self.settings = settings
        self.api_url = api_url
        self.api_token = api_token
        self.config = config
        self.executor = executor or LocalExecutor(config.max_concurrent, config.cancel_grace)
        self.running: dict[int, Launched] = {}
        self._term_sent: dict[int, float] = {}
        self._waiting: dict[int, str] = {}  # jobs queued on a cluster, and why they wait
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread.start()

    def wake(self) -> None:
        """Look now rather than at the next tick (a job was submitted or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        """On server shutdown: stop the job processes (they checkpoint) and re-queue their jobs — unless the
        executor's jobs outlive the engine: those keep running and are adopted at the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if self.executor.outlives_engine:
            if self.running:
                print(f"leaving {len(self.running)} {self.executor.name} job(s) running; the next start adopts them",
                      flush=True)
            self.running.clear()
            return
        for launched in self.running.values():
            self.executor.signal(launched, signal.SIGTERM)
        self._wait_gone(list(self.running.values()))
        for job_id in list(self.running):
            self.store.jobs.recover(job_id, "the engine server stopped while the job was running")
        self.running.clear()

    def _wait_gone(self, launched: list[Launched], grace: float | None = None) -> None:
        """Wait up to `grace` (default: the cancel grace) for each to end, SIGKILL the rest and wait for those."""
        deadline = time.monotonic() + (self.config.cancel_grace if grace is None else grace)
        for item in launched:
            while self.executor.poll(item) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.executor.poll(item) is None:
                self.executor.signal(item, signal.SIGKILL)
                killed = time.monotonic() + 10
                while self.executor.poll(item) is None and time.monotonic() < killed:
                    time.sleep(0.05)

    def recover(self) -> None:
        """Jobs still marked running belong to a server that stopped or died: the executor adopts those it can
        still watch; the others (their orphans stopped) are re-queued or failed."""
        for job in self.store.jobs.active():
            launched = self.executor.adopt(job)
            if isinstance(launched, Ended):
                state = self.store.jobs.recover(job["id"], f"it ended while the engine server was away: {launched.how}")
                print(f"recovered job {job['id']} (attempt {job['attempt']}): {launched.how}; now {state}", flush=True)
                continue
            if launched is not None:
                self.running[job["id"]] = launched
                if launched.slurm_job_id and launched.slurm_job_id != job["slurm_job_id"]:  # found by its name
                    self.store.jobs.set_slurm_job(job["id"], job["attempt"], launched.slurm_job_id,
                                                  f"found in Slurm as job {launched.slurm_job_id} by its name")
                # it may have waited long for this engine: count it alive from now
                self.store.jobs.touch(job["id"], job["attempt"])
                self.store.jobs.note(job["id"], job["attempt"], "adopted",
                                     f"the restarted engine took over {self._where(launched)}")
                print(f"adopted job {job['id']} (attempt {job['attempt']}, {self._where(launched)})", flush=True)
                continue
            state = self.store.jobs.recover(job["id"], "the engine server died while the job was running")
            print(f"recovered job {job['id']} (attempt {job['attempt']}): now {state}", flush=True)

    @staticmethod
    def _where(launched: Launched) -> str:
        return f"Slurm job {launched.slurm_job_id}" if launched.slurm_job_id else f"process {launched.pid}"

    # the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # the scheduler must outlive any one bad job
                print(f"scheduler error: {type(e).__name__}: {e}", flush=True)
            self._wake.wait(self.config.poll_interval)
            self._wake.clear()

    def tick(self) -> None:
        jobs = self.store.jobs
        jobs.fail_blocked()
        self._reap()
        active = {j["id"]: j for j in jobs.active()}
        now = time.monotonic()
        for job_id, launched in list(self.running.items()):
            job = active.get(job_id)
            if job is None:
                continue
            if job["state"] != "cancelling":
                continue
            if job_id not in self._term_sent:  # first SIGTERM: the recipe checkpoints and stops
                jobs.note(job_id, launched.attempt, "signalled", self.executor.signal(launched, signal.SIGTERM))
                self._term_sent[job_id] = now
            elif self._term_sent[job_id] + self.config.cancel_grace <= now:
                jobs.note(job_id, launched.attempt, "signalled", self.executor.signal(launched, signal.SIGKILL))
                self._term_sent[job_id] = float("inf")  # SIGKILL once
        self._watch_waiting()
        for job in jobs.stale():
            if job["id"] in self._waiting:
                continue  # queued on the cluster: no process yet to show life
            launched = self.running.pop(job["id"], None)
            if launched is not None:
                self.executor.signal(launched, signal.SIGKILL)
                if not self.executor.outlives_engine:  # a cluster ends it on its own time; its reports are refused
                    self._wait_gone([launched], grace=0)
            reason = (f"no heartbeat for {job['heartbeat_timeout']:.0f}s: the job process hung and was killed\n"
                      f"--- log tail ---\n{log_tail(log_path(self.settings, job['id']))}")
            jobs.end(job["id"], job["attempt"], "failed", reason)
        free = self.config.max_concurrent - len(self.running)
        if free > 0 and not self._stop.is_set():
            for job in jobs.runnable(free):
                claimed = jobs.claim(job["id"])
                if claimed is not None:
                    self._launch(claimed)

    def _launch(self, job: dict) -> None:
        env = {"DERMAE_API_URL": self.api_url, "DERMAE_API_TOKEN": self.api_token,
               "DERMAE_WORKSPACE": str(self.settings.workspace), "PYTHONUNBUFFERED": "1",
               # the process refuses to run as any other attempt: a late or stray copy (a resubmitted script)
               "DERMAE_JOB_ATTEMPT": str(job["attempt"])}
        try:
            launched = self.executor.launch(job, log_path(self.settings, job["id"]), env)
        except (OSError, ExecutorUnusable) as e:
            self.store.jobs.end(job["id"], job["attempt"], "failed", f"could not start the job: {e}")
            return
        self.running[job["id"]] = launched
        if launched.slurm_job_id:
            self.store.jobs.set_slurm_job(job["id"], job["attempt"], launched.slurm_job_id,
                                          f"submitted to Slurm as job {launched.slurm_job_id}")
        else:
            self.store.jobs.set_pid(job["id"], launched.pid)

    def _watch_waiting(self) -> None:
        """Jobs queued on a cluster show why they wait; one that starts counts as alive from then on."""
        for job_id, launched in list(self.running.items()):
            why = self.executor.waiting(launched)
            if why != self._waiting.get(job_id):
                self.store.jobs.touch(job_id, launched.attempt, why or "started")
                if why is None:
                    self._waiting.pop(job_id, None)
                else:
                    self._waiting[job_id] = why

    def _reap(self) -> None:
        for job_id, launched in list(self.running.items()):
            ended = self.executor.poll(launched)
            if ended is None:
                continue
            del self.running[job_id]
            self._term_sent.pop(job_id, None)
            self._waiting.pop(job_id, None)
            job = self.store.jobs.get(job_id)
            if job["state"] not in ("running", "cancelling") or job["attempt"] != launched.attempt:
                continue  # it reported its own end
            if job["state"] == "cancelling":
                self.store.jobs.end(job_id, launched.attempt, "cancelled", f"cancelled ({ended.how})")
                continue
            reason = (f"{ended.how} without reporting an end\n"
                      f"--- log tail ---\n{log_tail(log_path(self.settings, job_id))}")
            self.store.jobs.end(job_id, launched.attempt, "failed", reason)
