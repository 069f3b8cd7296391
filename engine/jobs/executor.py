"""How a job process is started and signalled. `LocalExecutor` runs it on this machine; a cluster executor
(Ray Jobs, a Slurm submit) can implement the same three methods without touching recipes or the scheduler."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class Launched:
    job_id: int
    attempt: int
    pid: int
    process: subprocess.Popen


class Executor(Protocol):
    def launch(self, job_id: int, attempt: int, num_processes: int, log_path: Path,
               env: dict[str, str]) -> Launched: ...

    def poll(self, launched: Launched) -> int | None: ...

    def signal(self, launched: Launched, sig: int) -> None: ...


WORKER_MODULE = "engine.worker"  # the job process's entry point: above the recipes it runs, so outside jobs/
# What a job process's command line may name: an engine upgraded while jobs ran still recognises their processes
# (they were started as `engine.jobs.run` before the entry point moved), so a restart stops them before re-queuing.
WORKER_MODULES = (WORKER_MODULE, "engine.jobs.run")


def job_command(job_id: int, num_processes: int) -> list[str]:
    """One process: the job entry point. Several: the same entry point under `accelerate launch`."""
    if num_processes <= 1:
        return [sys.executable, "-m", WORKER_MODULE, str(job_id)]
    # --multi_gpu selects accelerate's torchrun-style launcher (RANK/WORLD_SIZE per process); on a machine without
    # GPUs the processes still start, and accelerate's state picks the gloo backend (multi-CPU).
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", WORKER_MODULE, str(job_id)]


class LocalExecutor:
    def launch(self, job_id: int, attempt: int, num_processes: int, log_path: Path,
               env: dict[str, str]) -> Launched:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n===== attempt {attempt} =====\n".encode())
            log.flush()
            # Its own session: signals reach accelerate's worker processes too, and a dying server does not
            # take the job down with it (the restarted server recovers it).
            process = subprocess.Popen(job_command(job_id, num_processes), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env={**os.environ, **env}, start_new_session=True)
        return Launched(job_id, attempt, process.pid, process)

    def poll(self, launched: Launched) -> int | None:
        return launched.process.poll()

    def signal(self, launched: Launched, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launched.pid, sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
