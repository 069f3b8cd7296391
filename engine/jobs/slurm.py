"""The Slurm executor: every attempt of a job is one Slurm batch job, submitted with `sbatch`.

Why plain `sbatch`/`squeue`/`scancel`/`scontrol` rather than submitit: the engine must re-attach to a job after
its own restart using nothing but the Slurm job id in its database, poll many jobs with one `squeue`, and send
SIGTERM with a grace period on cancel; those are one command each, and submitit's pickled-callable model (its own
folders, its own result files) would be a second job protocol beside the engine's HTTP one.

The batch script is written into the workspace (`jobs/<id>/slurm/attempt-<n>.sbatch`, #SBATCH lines included, so
what was submitted can be read and resubmitted by hand) and runs the same entry point as a local job: one process
is `python -m engine.worker ID`; several run as `srun accelerate launch` with one task per node. The job reaches the
engine over HTTP with the URL and token in its environment, which `sbatch` passes on (never on a command line).
The workspace and the engine's Python environment must be on a filesystem the nodes share (README, "Scale-out").

Slurm remembers an ended job for `MinJobAge` seconds (squeue, scontrol); after that only accounting (`sacct`)
knows its end, so a cluster without slurmdbd needs MinJobAge longer than the engine may be down.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.jobs.executor import WORKER_MODULE, Ended, ExecutorUnusable, Launched, accelerate_command
from engine.settings import is_loopback

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# Not started yet: no process can show life, so the heartbeat timeout waits.
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
STILL_ALIVE = WAITING | {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
# Slurm's end states in words, for the job's error.
END_STATES = {
    "COMPLETED": "its process exited normally",
    "FAILED": "its process failed",
    "CANCELLED": "it was cancelled in Slurm (scancel from outside the engine, or an administrator)",
    # (a job the engine itself scancelled reads ENGINE_CANCELLED instead)
    "TIMEOUT": "it reached its time limit (resources.time_limit_min); Retry resumes from the last checkpoint",
    "NODE_FAIL": "its node failed; Retry resumes from the last checkpoint",
    "BOOT_FAIL": "its node failed to boot",
    "OUT_OF_MEMORY": "it ran out of memory (resources.mem_gb)",
    "PREEMPTED": "it was preempted by a job of higher priority",
    "DEADLINE": "it reached its deadline",
}


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm says of one of its jobs."""

    id: str
    state: str  # JobState: PENDING, RUNNING, COMPLETED, TIMEOUT, …
    reason: str  # why it waits, or why it ended ("None" when there is nothing to say)
    exit_code: int | None = None
    exit_signal: int | None = None


def run_slurm(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run a Slurm command; its stdout, or ExecutorUnusable with its stderr."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise ExecutorUnusable(f"{args[0]} is not on PATH: the Slurm executor needs Slurm's client commands "
                               f"({', '.join(COMMANDS)})") from None
    except subprocess.TimeoutExpired:
        raise ExecutorUnusable(f"{shlex.join(args)} did not answer within {timeout:.0f}s (is slurmctld up?)") from None
    if done.returncode != 0:
        raise ExecutorUnusable(f"{shlex.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def parse_scontrol(line: str) -> SlurmJob:
    """One line of `scontrol show job -o ID`: `JobId=12 JobName=… JobState=TIMEOUT Reason=TimeLimit … ExitCode=0:15`."""
    fields = dict(item.split("=", 1) for item in shlex.split(line) if "=" in item)
    code, _, sig = fields.get("ExitCode", "").partition(":")
    return SlurmJob(fields["JobId"], fields["JobState"], fields.get("Reason", "None"),
                    int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


def runs_in_steps(job: dict[str, Any]) -> bool:
    """Several processes run as `srun` tasks; one is the batch script's own process."""
    return job.get("num_processes", 1) > 1 or (job.get("resources") or {}).get("nodes", 1) > 1


ENGINE_CANCELLED = "the engine cancelled it (scancel)"
# Variables of a surrounding Slurm job or shell would override the batch script's #SBATCH lines (SBATCH_*) or make
# sbatch think it runs inside that allocation (SLURM_JOB_ID, …); SLURM_CONF says which cluster and is kept.
INHERITED_SLURM = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")


def describe_end(job: SlurmJob, cancelled_by_engine: bool = False) -> str:
    words = ENGINE_CANCELLED if cancelled_by_engine and job.state == "CANCELLED" else END_STATES.get(job.state,
                                                                                                      "it ended")
    said = f"; Slurm's reason: {job.reason}" if job.reason not in ("None", "", None) else ""
    code = ""
    if job.exit_signal:
        code = f", killed by signal {job.exit_signal}"
    elif job.exit_code:
        code = f", exit code {job.exit_code}"
    return f"Slurm job {job.id} ended {job.state}: {words}{said}{code}"


def exit_status(job: SlurmJob) -> int:
    if job.exit_signal:
        return -job.exit_signal
    if job.exit_code is not None and (job.exit_code or job.state == "COMPLETED"):
        return job.exit_code
    return 1  # ended badly with no code of its own (node failure, time limit, …)


class SlurmExecutor:
    name = "slurm"
    outlives_engine = True

    def __init__(self, workspace: Path, partition: str | None = None, *, poll_seconds: float = 2.0,
                 orphan_timeout: float = 900.0):
        self.workspace = workspace
        self.partition = partition  # None: the cluster's default, resolved by check()
        self.poll_seconds = poll_seconds
        self.orphan_timeout = orphan_timeout  # how long a job keeps working while the engine is unreachable
        # Two workspaces on one cluster never mistake each other's jobs: their names carry the workspace's tag.
        self.tag = hashlib.sha256(str(workspace).encode()).hexdigest()[:8]
        self._known: dict[str, SlurmJob] = {}
        self._in_steps: set[str] = set()  # Slurm jobs whose processes run as srun's tasks (several processes)
        self._scancelled: set[str] = set()  # Slurm jobs this engine ended with a plain scancel
        self._polled = 0.0

    # start-up checks ------------------------------------------------------------------------------------------
    def check(self, host: str, job_url: str) -> None:
        """Refuse (ExecutorUnusable) what cannot work: no Slurm commands, no such partition, or nodes on other
        machines while the engine listens on loopback only."""
        if any(c.isspace() or c == "%" for c in str(self.workspace)):
            # #SBATCH lines are not shell-quoted, and sbatch reads % in --output as a pattern
            raise ExecutorUnusable(f"the workspace path {str(self.workspace)!r} has a space or a %, which sbatch's "
                                   "--output cannot take; move it (DERMAE_WORKSPACE).")
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if missing:
            raise ExecutorUnusable(f"--executor slurm needs Slurm's client commands on PATH; missing: "
                                   f"{', '.join(missing)}. Run the engine on a login or service node of the cluster.")
        listed = run_slurm(["sinfo", "-h", "-o", "%P"]).split()
        partitions = [p.rstrip("*") for p in listed]
        if self.partition is None:
            default = [p.rstrip("*") for p in listed if p.endswith("*")]
            if not default:
                raise ExecutorUnusable(f"Slurm has no default partition; pick one of {', '.join(partitions)} with "
                                       "--partition.")
            self.partition = default[0]
        if self.partition not in partitions:
            raise ExecutorUnusable(f"Slurm has no partition {self.partition!r}; it has: {', '.join(partitions)}. "
                                   "Pick one with --partition.")
        nodes = run_slurm(["sinfo", "-h", "-p", self.partition, "-o", "%N"]).strip()
        hosts = run_slurm(["scontrol", "show", "hostnames", nodes]).split() if nodes else []
        here = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn(), "localhost"}
        remote = sorted(set(hosts) - here)
        if remote and is_loopback(host) and is_loopback(job_url.split("//", 1)[-1].rsplit(":", 1)[0]):
            raise ExecutorUnusable(
                f"the engine listens on {host} only, but partition {self.partition!r} runs jobs on "
                f"{', '.join(remote[:5])}{' …' if len(remote) > 5 else ''}, which cannot reach it. Bind an address "
                "the nodes reach (--host, with DERMAE_API_TOKEN set), or pass --job-url; README, \"Scale-out\".")

    # launching ------------------------------------------------------------------------------------------------
    def job_name(self, job_id: int, attempt: int) -> str:
        return f"dermae-{self.tag}-{job_id}-{attempt}"

    def script_path(self, job_id: int, attempt: int) -> Path:
        return self.workspace / "jobs" / str(job_id) / "slurm" / f"attempt-{attempt}.sbatch"

    def batch_script(self, job: dict[str, Any], log_path: Path) -> str:
        """The whole batch script of one attempt: its #SBATCH resources, then the job's process(es)."""
        resources = job.get("resources") or {}
        nodes = resources.get("nodes", 1)
        options = [f"--job-name={self.job_name(job['id'], job['attempt'])}",
                   f"--partition={resources.get('partition') or self.partition}",
                   f"--nodes={nodes}", "--ntasks-per-node=1",
                   f"--output={log_path}", "--open-mode=append",
                   # a requeued script would run an attempt the engine already ended; Retry makes a new one
                   "--no-requeue"]
        if resources.get("cpus_per_task"):
            options.append(f"--cpus-per-task={resources['cpus_per_task']}")
        if resources.get("gpus_per_node"):
            options.append(f"--gpus-per-node={resources['gpus_per_node']}")
        if resources.get("mem_gb"):
            options.append(f"--mem={max(1, round(resources['mem_gb'] * 1024))}M")
        if resources.get("time_limit_min"):
            options.append(f"--time={resources['time_limit_min']}")
        lines = ["#!/bin/bash",
                 f"# DerMAE job {job['id']} ({job['kind']}), attempt {job['attempt']}: written by the engine, "
                 "submitted with sbatch.",
                 *(f"#SBATCH {option}" for option in options),
                 "set -eu",
                 # a node that cannot see the workspace says so through the API (engine.worker checks this file)
                 f"export DERMAE_LAUNCH_FILE={shlex.quote(str(self.script_path(job['id'], job['attempt'])))}",
                 # it keeps working through an engine restart, retrying its reports, for this long
                 f"export DERMAE_ORPHAN_TIMEOUT={self.orphan_timeout:g}",
                 f"export DERMAE_UNREACHABLE_WAIT={self.orphan_timeout:g}"]
        processes = job.get("num_processes", 1)
        per_node = max(1, processes // nodes)
        # the node's CPUs shared by its processes, as the local executor does
        lines += [f'threads=$(( ${{SLURM_CPUS_PER_TASK:-$(nproc)}} / {per_node} ))',
                  'export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))']
        if not runs_in_steps(job):
            lines.append(f"exec {shlex.join([sys.executable, '-m', WORKER_MODULE, str(job['id'])])}")
            return "\n".join(lines) + "\n"
        # One task per node, each an `accelerate launch` of that node's share; rank 0 (on the first node) reports
        # and writes checkpoints. $SLURM_NODEID is each task's own, so it is expanded inside the task.
        command = accelerate_command(job["id"], processes, machines=nodes, machine_rank="$SLURM_NODEID",
                                     main_address="$MAIN_HOST", main_port=20000 + (job["id"] * 7 + job["attempt"])
                                     % 20000)
        inner = " ".join(part if part.startswith("$") else shlex.quote(part) for part in command)
        lines += ['MAIN_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  "export MAIN_HOST",
                  # srun (22.05+) no longer takes --cpus-per-task from the allocation: say it again
                  "exec srun --kill-on-bad-exit=1 "
                  + (f"--cpus-per-task={resources['cpus_per_task']} " if resources.get("cpus_per_task") else "")
                  + f"bash -c {shlex.quote('exec ' + inner)}"]
        return "\n".join(lines) + "\n"

    def launch(self, job: dict[str, Any], log_path: Path, env: dict[str, str]) -> Launched:
        script = self.script_path(job["id"], job["attempt"])
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(self.batch_script(job, log_path))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n===== attempt {job['attempt']} (Slurm) =====\n".encode())
        # The URL and token travel in sbatch's environment (exported to the job), not on any command line.
        inherited = {k: v for k, v in os.environ.items() if k == "SLURM_CONF" or not k.startswith(INHERITED_SLURM)}
        try:
            out = run_slurm(["sbatch", "--parsable", str(script)], env={**inherited, **env})
        except ExecutorUnusable:
            # sbatch may have submitted before it failed to answer (a timeout): make sure no copy runs unrecorded
            with contextlib.suppress(ExecutorUnusable):
                run_slurm(["scancel", f"--name={self.job_name(job['id'], job['attempt'])}"])
            raise
        slurm_id = out.strip().split(";")[0]
        return self._watch(job, slurm_id)

    def _watch(self, job: dict[str, Any], slurm_id: str) -> Launched:
        self._known[slurm_id] = SlurmJob(slurm_id, "PENDING", "None")
        if runs_in_steps(job):
            self._in_steps.add(slurm_id)
        return Launched(job["id"], job["attempt"], slurm_job_id=slurm_id)

    # watching -------------------------------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        """One squeue for every job we watch, at most every `poll_seconds`."""
        if not self._known or (not force and time.monotonic() - self._polled < self.poll_seconds):
            return
        self._polled = time.monotonic()
        watched = [i for i, j in self._known.items() if j.state in STILL_ALIVE]
        if not watched:
            return
        try:
            out = run_slurm(["squeue", "-h", "-t", "all", "-j", ",".join(watched), "-o", "%i|%T|%r"])
        except ExecutorUnusable as e:
            # squeue refuses outright when it knows none of the ids (it lists the known ones otherwise): all of them
            # ended longer than MinJobAge ago, and scontrol/sacct are asked below
            if "Invalid job id" not in str(e):
                raise
            out = ""
        seen = set()
        for line in out.splitlines():
            slurm_id, state, reason = ([*line.split("|"), "", ""])[:3]
            if slurm_id in self._known:
                seen.add(slurm_id)
                if state in STILL_ALIVE:
                    self._known[slurm_id] = SlurmJob(slurm_id, state, reason)
                else:
                    self._known[slurm_id] = self._ended(slurm_id)
        for slurm_id in set(watched) - seen:  # squeue has forgotten it: MinJobAge passed
            self._known[slurm_id] = self._ended(slurm_id)

    def _ended(self, slurm_id: str) -> SlurmJob:
        """An ended job's state, reason and exit code: scontrol while Slurm remembers it, else accounting."""
        try:
            return parse_scontrol(run_slurm(["scontrol", "show", "job", "-o", slurm_id]).strip())
        except (ExecutorUnusable, KeyError, ValueError):
            pass
        try:
            out = run_slurm(["sacct", "-j", slurm_id, "-X", "-n", "-P", "-o", "State,ExitCode,Reason"]).strip()
            state, exit_code, reason = ([*out.splitlines()[0].split("|"), "", "", ""])[:3]
            code, _, sig = exit_code.partition(":")
            return SlurmJob(slurm_id, state.split()[0], f"{reason} ({state})" if " " in state else reason,
                            int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)
        except (ExecutorUnusable, IndexError):
            return SlurmJob(slurm_id, "UNKNOWN", "Slurm no longer knows this job (it ended longer than MinJobAge "
                                                 "ago and accounting is off)")

    def status(self, slurm_id: str) -> SlurmJob:
        self._refresh()
        return self._known[slurm_id]

    def poll(self, launched: Launched) -> Ended | None:
        job = self.status(launched.slurm_job_id)  # an ended job stays known: asking again answers the same
        if job.state in STILL_ALIVE:
            return None
        return Ended(exit_status(job), describe_end(job, launched.slurm_job_id in self._scancelled))

    def waiting(self, launched: Launched) -> str | None:
        job = self.status(launched.slurm_job_id)
        if job.state not in WAITING:
            return None
        why = f": {job.reason}" if job.reason not in ("None", "") else ""
        return f"waiting in Slurm's queue as job {job.id} ({job.state.lower()}{why})"

    def signal(self, launched: Launched, sig: int) -> str:
        self._refresh(force=True)  # what it is now, not at the last poll: a job that just started has a process
        if sig == signal.SIGKILL or self._known[launched.slurm_job_id].state in WAITING:
            # Slurm's own end (SIGTERM, KillWait, SIGKILL); a job still queued has no process to signal
            command = ["scancel", launched.slurm_job_id]
            self._scancelled.add(launched.slurm_job_id)
        elif launched.slurm_job_id in self._in_steps:
            # srun's tasks: signalled as job steps. Signalling the batch step (srun itself) would make srun SIGKILL
            # them, with no chance to checkpoint.
            command = ["scancel", f"--signal={signal.Signals(sig).name.removeprefix('SIG')}", launched.slurm_job_id]
        else:  # the batch step is the job process itself (the script exec'd it)
            command = ["scancel", "--batch", f"--signal={signal.Signals(sig).name.removeprefix('SIG')}",
                       launched.slurm_job_id]
        try:
            run_slurm(command)
        except ExecutorUnusable as e:
            return f"{shlex.join(command)} failed: {e}"
        self._polled = 0.0  # look again at the next poll
        return shlex.join(command)

    def adopt(self, job: dict[str, Any]) -> Launched | Ended | None:
        """The Slurm job of the attempt a previous engine ran: by the id it recorded, else by the job's name (the
        engine died between sbatch and recording the id); how it ended if it ended while the engine was away;
        None if Slurm has no such job. Never submitted twice."""
        slurm_id = job.get("slurm_job_id")
        if not slurm_id:
            out = run_slurm(["squeue", "-h", "-t", "all", "--name", self.job_name(job["id"], job["attempt"]),
                             "-o", "%i"]).split()
            slurm_id = out[-1] if out else None
        if not slurm_id:
            return None
        launched = self._watch(job, slurm_id)
        self._refresh(force=True)
        return self.poll(launched) or launched
