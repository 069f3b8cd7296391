"""The scheduler inside the engine server: claims queued jobs, runs each in its own process, watches them.

One thread, one loop, every `poll_interval` seconds:
  1. queued jobs whose upstream failed end as failed;
  2. processes that exited are matched to their jobs (a process that died without reporting fails its job
     with the signal and the tail of its log);
  3. cancel requests become SIGTERM, then SIGKILL after the grace period;
  4. running jobs that showed no life within their heartbeat timeout are killed and failed;
  5. free slots (max_concurrent) are filled with the oldest runnable jobs, each claimed atomically.
At start-up, jobs left running by a previous server are recovered: their orphaned processes are stopped and
they are re-queued (resuming from their checkpoints) while attempts remain.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.jobs.executor import WORKER_MODULES, Executor, Launched, LocalExecutor, describe_exit
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
        self.executor = executor or LocalExecutor()
        self.running: dict[int, Launched] = {}
        self._term_sent: dict[int, float] = {}
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
        """On server shutdown: stop the job processes (they checkpoint) and re-queue their jobs."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        for launched in self.running.values():
            self.executor.signal(launched, signal.SIGTERM)
        self._wait_gone(list(self.running.values()))
        for job_id in list(self.running):
            self.store.jobs.recover(job_id, "the engine server stopped while the job was running")
        self.running.clear()

    def _wait_gone(self, launched: list[Launched]) -> None:
        deadline = time.monotonic() + self.config.cancel_grace
        for item in launched:
            while self.executor.poll(item) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.executor.poll(item) is None:
                self.executor.signal(item, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    item.process.wait(timeout=10)

    def recover(self) -> None:
        """Jobs still marked running belong to a server that died: stop their orphans, re-queue or fail them."""
        for job in self.store.jobs.active():
            if job["pid"]:
                self._stop_orphan(job["pid"], job["id"])
            state = self.store.jobs.recover(job["id"], "the engine server died while the job was running")
            print(f"recovered job {job['id']} (attempt {job['attempt']}): now {state}", flush=True)

    def _stop_orphan(self, pid: int, job_id: int) -> None:
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        if not any(module in cmdline for module in WORKER_MODULES) or str(job_id) not in cmdline.split():
            return  # the pid now belongs to something else
        group = [process, *process.children(recursive=True)]
        for p in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=self.config.cancel_grace)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)

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
                self.executor.signal(launched, signal.SIGTERM)
                self._term_sent[job_id] = now
            elif now - self._term_sent[job_id] > self.config.cancel_grace:
                self.executor.signal(launched, signal.SIGKILL)
        for job in jobs.stale():
            launched = self.running.get(job["id"])
            if launched is not None:
                self.executor.signal(launched, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    launched.process.wait(timeout=10)
                self.running.pop(job["id"], None)
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
               "DERMAE_WORKSPACE": str(self.settings.workspace), "PYTHONUNBUFFERED": "1"}
        if "OMP_NUM_THREADS" not in os.environ:
            # Share the cores between concurrent jobs: oversubscribed OpenMP threads spin and run many times slower.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.config.max_concurrent))
        try:
            launched = self.executor.launch(job["id"], job["attempt"], job["num_processes"],
                                            log_path(self.settings, job["id"]), env)
        except OSError as e:
            self.store.jobs.end(job["id"], job["attempt"], "failed", f"could not start the job process: {e}")
            return
        self.running[job["id"]] = launched
        self.store.jobs.set_pid(job["id"], launched.pid)

    def _reap(self) -> None:
        for job_id, launched in list(self.running.items()):
            code = self.executor.poll(launched)
            if code is None:
                continue
            del self.running[job_id]
            self._term_sent.pop(job_id, None)
            job = self.store.jobs.get(job_id)
            if job["state"] not in ("running", "cancelling") or job["attempt"] != launched.attempt:
                continue  # it reported its own end
            if job["state"] == "cancelling":
                self.store.jobs.end(job_id, launched.attempt, "cancelled", f"cancelled ({describe_exit(code)})")
                continue
            reason = (f"the job process {describe_exit(code)} without reporting an end\n"
                      f"--- log tail ---\n{log_tail(log_path(self.settings, job_id))}")
            self.store.jobs.end(job_id, launched.attempt, "failed", reason)
