"""What a recipe sees of the job system: progress, metrics, artifacts, checkpoints, and whether to stop.

A reporter thread sends progress, batched metrics and a heartbeat to the engine about once a second, so a
recipe may log a metric every step at the cost of a list append. The heartbeat says the recipe's own thread
has called the context since the last report: a recipe stuck in a deadlock stops showing life even though the
reporter thread still runs, and the scheduler's heartbeat timeout ends it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.client import Client
from engine.jobs import checkpoints
from engine.jobs.checkpoints import Checkpoint

CANCELLED = "the job was cancelled"  # the stop reason when the engine reports a cancel request


class Stopped(Exception):
    """Raised by a recipe (after checkpointing) when `should_stop()` turned true."""


class JobContext:
    def __init__(self, *, job_id: int, attempt: int, work_dir: Path, workspace: Path,
                 reporter: Reporter | None = None, is_main: bool = True, api: Client | None = None,
                 after: list[int] | None = None):
        self.job_id = job_id
        self.api: Client = api  # read data and other jobs' artifacts through the API (None only in unit tests)
        self.after = after or []  # the jobs this one waited on
        self.attempt = attempt
        self.work_dir = work_dir
        self.workspace = workspace
        self.checkpoint_dir = work_dir / "checkpoints"
        self.artifact_dir = work_dir / "artifacts"
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.reporter = reporter
        self.is_main = is_main  # rank 0 under accelerate: the one process that writes checkpoints and reports
        self._stop = threading.Event()
        self.stop_reason: str | None = None

    # reporting --------------------------------------------------------------------------------------------
    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self.reporter:
            self.reporter.set_progress(done, total, message)

    def log_metric(self, name: str, value: float, step: int) -> None:
        if self.reporter:
            self.reporter.add_metric(name, float(value), int(step))

    def log(self, message: str) -> None:
        """A line in the job's log file, time-stamped."""
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)
        if self.reporter:
            self.reporter.touch()

    def save_artifact(self, path: str | Path, kind: str) -> Path:
        """Register a file or folder as an artifact of this job; one outside the workspace is copied in first."""
        source = Path(path).resolve()
        if not source.is_relative_to(self.workspace.resolve()):
            target = self.artifact_dir / source.name
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
            source = target
        if self.reporter:
            self.reporter.flush()
            self.reporter.add_artifact(source, kind)
        return source

    # checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int = 2) -> Checkpoint | None:
        """`write(folder)` fills a fresh folder; it becomes the latest checkpoint only once complete.
        Only the main process writes (None elsewhere)."""
        if not self.is_main:
            return None
        checkpoint = checkpoints.save(self.checkpoint_dir, step, write, keep=keep)
        self.log(f"checkpoint {step} written by rank {os.environ.get('RANK', '0')}")
        return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest intact checkpoint of this job (from any earlier attempt), or None."""
        return checkpoints.latest(self.checkpoint_dir, warn=self.log)

    # stopping ---------------------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """True once the job is cancelled, the process is asked to stop (SIGTERM), or the engine is gone."""
        if self.reporter:
            self.reporter.touch()
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
            print(f"stop requested: {reason}", file=sys.stderr, flush=True)


class Reporter:
    """Background thread that sends what the recipe reported, every `interval` seconds."""

    def __init__(self, client: Any, job_id: int, attempt: int, *, interval: float = 1.0,
                 orphan_timeout: float = 30.0, on_stop: Callable[[str], None], artifact_client: Any = None):
        self.client = client
        # an artifact must arrive: sent through a client that may wait out an engine restart (`client` never waits,
        # so that the orphan timeout sees an unreachable engine at once)
        self.artifact_client = artifact_client or client
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self.orphan_timeout = orphan_timeout
        self.on_stop = on_stop
        self._lock = threading.Lock()
        self._metrics: list[dict[str, Any]] = []
        self._progress: tuple[float, float | None, str | None] | None = None
        self._touched = True
        self._last_contact = time.monotonic()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-reporter", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def touch(self) -> None:
        self._touched = True

    def set_progress(self, done: float, total: float | None, message: str | None) -> None:
        with self._lock:
            self._progress = (done, total, message)
            self._touched = True

    def add_metric(self, name: str, value: float, step: int) -> None:
        with self._lock:
            self._metrics.append({"name": name, "value": value, "step": step})
            self._touched = True

    def add_artifact(self, path: Path, kind: str) -> None:
        self.artifact_client.add_artifact(self.job_id, self.attempt, str(path), kind)

    def flush(self) -> None:
        from engine.client import ApiError, ServerNotFound

        with self._lock:
            metrics, self._metrics = self._metrics, []
            progress, self._progress = self._progress, None
            alive, self._touched = self._touched, False
        try:
            state = self.client.report_job(self.job_id, self.attempt, progress=progress, metrics=metrics,
                                           alive=alive)
            self._last_contact = time.monotonic()
        except ApiError as e:
            if e.status_code == 409:  # this attempt is over (cancelled, or recovered by a restarted server)
                self.on_stop(f"the engine says: {e.detail}")
                return
            with self._lock:
                self._metrics = metrics + self._metrics
            raise
        except ServerNotFound:
            with self._lock:  # keep them for the next try
                self._metrics = metrics + self._metrics
                if self._progress is None:
                    self._progress = progress
            if time.monotonic() - self._last_contact > self.orphan_timeout:
                self.on_stop(f"the engine has been unreachable for {self.orphan_timeout:.0f}s")
            return
        if state == "cancelling":
            self.on_stop(CANCELLED)

    def _loop(self) -> None:
        while not self._closing.wait(self.interval):
            try:
                self.flush()
            except Exception as e:  # never let reporting kill the job; say it in the log
                print(f"reporting failed: {e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception as e:
            print(f"final report failed: {e}", file=sys.stderr, flush=True)

