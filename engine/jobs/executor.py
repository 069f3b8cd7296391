"""How a job process is started, watched and signalled. `LocalExecutor` runs it on this machine;
`engine.jobs.slurm.SlurmExecutor` submits it to a Slurm cluster. The scheduler sees only this interface."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Launched:
    """One running attempt of a job, as its executor knows it."""

    job_id: int
    attempt: int
    pid: int | None = None  # local: the leader of the job's process group
    process: subprocess.Popen | None = None
    slurm_job_id: str | None = None  # slurm: the batch job that runs the attempt


@dataclass(frozen=True)
class Ended:
    code: int  # exit status; negative: killed by that signal
    how: str  # in words, for the job's error: "the job process exited with code 1", "Slurm job 12 ended TIMEOUT …"


class ExecutorUnusable(RuntimeError):
    """The executor cannot run jobs as configured; the message says why and what to do (the server refuses to
    start)."""


class Executor(Protocol):
    name: str
    outlives_engine: bool  # its jobs keep running while the engine is down, and are adopted when it comes back

    def check(self, host: str, job_url: str) -> None:
        """Raise ExecutorUnusable, saying why, if jobs could not run (the server then refuses to start)."""
        ...

    def launch(self, job: dict[str, Any], log_path: Path, env: dict[str, str]) -> Launched: ...

    def poll(self, launched: Launched) -> Ended | None: ...

    def waiting(self, launched: Launched) -> str | None:
        """Why the attempt has not started yet (queued on a cluster), or None once it runs."""
        ...

    def signal(self, launched: Launched, sig: int) -> str:
        """Send `sig` (SIGTERM: checkpoint and stop; SIGKILL: now); returns what was done, for the job's events."""
        ...

    def adopt(self, job: dict[str, Any]) -> Launched | Ended | None:
        """A job a previous engine left running: take its attempt over (Launched), say how it ended while the
        engine was away (Ended), or make sure nothing of it still runs (None); the scheduler re-queues or fails the
        last two."""
        ...


WORKER_MODULE = "engine.worker"  # the job process's entry point: above the recipes it runs, so outside jobs/
# What a job process's command line may name: an engine upgraded while jobs ran still recognises their processes
# (they were started as `engine.jobs.run` before the entry point moved), so a restart stops them before re-queuing.
WORKER_MODULES = (WORKER_MODULE, "engine.jobs.run")


def accelerate_command(job_id: int, num_processes: int, machines: int = 1,
                       machine_rank: str = "0", main_address: str | None = None, main_port: int | None = None
                       ) -> list[str]:
    """The job entry point under `accelerate launch`: `num_processes` in all, spread over `machines`."""
    # --multi_gpu selects accelerate's torchrun-style launcher (RANK/WORLD_SIZE per process); on a machine without
    # GPUs the processes still start, and accelerate's state picks the gloo backend (multi-CPU).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", str(machines), "--mixed_precision", "no", "--dynamo_backend",
               "no"]
    if machines > 1:
        command += ["--machine_rank", machine_rank, "--main_process_ip", str(main_address), "--main_process_port",
                    str(main_port)]
    return [*command, "-m", WORKER_MODULE, str(job_id)]


def job_command(job_id: int, num_processes: int) -> list[str]:
    """One process: the job entry point. Several: the same entry point under `accelerate launch`."""
    if num_processes <= 1:
        return [sys.executable, "-m", WORKER_MODULE, str(job_id)]
    return accelerate_command(job_id, num_processes)


class LocalExecutor:
    """Job processes are children of the engine server, on its machine, each in its own process group."""

    name = "local"
    outlives_engine = False

    def __init__(self, max_concurrent: int = 1, cancel_grace: float = 10.0):
        self.max_concurrent = max_concurrent
        self.cancel_grace = cancel_grace

    def check(self, host: str, job_url: str) -> None:
        """Job processes run here and reach the engine at `job_url` on this machine: nothing can be missing."""

    def launch(self, job: dict[str, Any], log_path: Path, env: dict[str, str]) -> Launched:
        nodes = job.get("resources", {}).get("nodes", 1)
        if nodes > 1:
            raise ExecutorUnusable(f"job {job['id']} asks for {nodes} nodes; the local executor has one machine. "
                                   "Run the engine with --executor slurm, or ask for one node.")
        env = dict(env)
        if "OMP_NUM_THREADS" not in os.environ:
            # Share the cores between concurrent jobs: oversubscribed OpenMP threads spin and run many times slower.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.max_concurrent))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n===== attempt {job['attempt']} =====\n".encode())
            log.flush()
            # Its own session: signals reach accelerate's worker processes too, and a dying server does not
            # take the job down with it (the restarted server recovers it).
            process = subprocess.Popen(job_command(job["id"], job["num_processes"]), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                       start_new_session=True)
        return Launched(job["id"], job["attempt"], pid=process.pid, process=process)

    def poll(self, launched: Launched) -> Ended | None:
        code = launched.process.poll()
        return None if code is None else Ended(code, f"the job process {describe_exit(code)}")

    def waiting(self, launched: Launched) -> str | None:
        return None

    def signal(self, launched: Launched, sig: int) -> str:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launched.pid, sig)
        return f"{signal.Signals(sig).name} sent to process group {launched.pid}"

    def adopt(self, job: dict[str, Any]) -> Launched | None:
        """A child of a dead server cannot be watched by this one: stop it (it checkpoints) so it is re-queued."""
        if job["pid"]:
            stop_orphan(job["pid"], job["id"], self.cancel_grace)
        return None


def stop_orphan(pid: int, job_id: int, grace: float = 10.0) -> None:
    """SIGTERM the job process `pid` and its children, SIGKILL after `grace` — if it still is that job's."""
    import psutil

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
    _, alive = psutil.wait_procs(group, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
