"""The job process: `python -m engine.worker JOB_ID` (or under `accelerate launch` for several processes). It sits
above the recipes it runs; engine/jobs (the scheduler, the executor, the context) stays below them.

Started by the scheduler with DERMAE_API_URL, DERMAE_API_TOKEN and DERMAE_WORKSPACE set. It fetches the job,
validates its parameters, runs the recipe with a `JobContext`, and reports how it ended. Under accelerate only
rank 0 reports; the other ranks compute.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

from engine.client import Client
from engine.jobs.context import CANCELLED, JobContext, Reporter, Stopped
from engine.recipes.registry import get_kind
from engine.schemas import JobState
from engine.settings import Settings

EXIT_ORPHANED = 3  # the engine is gone or has given this attempt up: nobody to report to


def job_work_dir(settings: Settings, job_id: int):
    return settings.workspace / "jobs" / str(job_id)


def main(job_id: int) -> int:
    settings = Settings.from_env()
    orphan_timeout = float(os.environ.get("DERMAE_ORPHAN_TIMEOUT", "30"))
    # A Slurm job outlives its engine: its calls ride out a restart. A local one does not wait (its engine stops it
    # on the way down, and a restarted one stops orphans), so a shutdown is never held up by a waiting job.
    client = Client.from_settings(settings, unreachable_wait=float(os.environ.get("DERMAE_UNREACHABLE_WAIT", "0")))
    job = client.job(job_id)
    is_main = int(os.environ.get("RANK", "0")) == 0
    launched_as = os.environ.get("DERMAE_JOB_ATTEMPT")
    if launched_as and (int(launched_as) != job.attempt or job.state not in (JobState.running, JobState.cancelling)):
        # a late or stray copy of an attempt the engine has ended (or replaced): it must not report as the new one
        print(f"job {job.id} is {job.state} at attempt {job.attempt}; this process was launched as attempt "
              f"{launched_as}: not running it", file=sys.stderr, flush=True)
        return EXIT_ORPHANED
    unseen = workspace_unseen(settings)
    if unseen:  # before anything writes: a node without the shared filesystem would fill a local copy
        print(unseen, file=sys.stderr, flush=True)
        if is_main:
            client.finish_job(job.id, job.attempt, JobState.failed, error=unseen)
        return 1
    kind = get_kind(job.kind)
    params = kind.params.model_validate(job.params)
    print(f"job {job.id} ({job.kind}) attempt {job.attempt}, pid {os.getpid()}, rank "
          f"{os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')}", flush=True)

    ctx = JobContext(job_id=job.id, attempt=job.attempt, work_dir=job_work_dir(settings, job.id),
                     workspace=settings.workspace, is_main=is_main, api=client, after=job.after)
    reporter = None
    if is_main:
        # its own client, which never waits: the reporter's orphan timeout must see an unreachable engine at once
        reporter = Reporter(Client.from_settings(settings), job.id, job.attempt, on_stop=ctx.request_stop,
                            interval=float(os.environ.get("DERMAE_REPORT_INTERVAL", "1.0")),
                            orphan_timeout=orphan_timeout, artifact_client=client)
        ctx.reporter = reporter
        reporter.start()
    signal.signal(signal.SIGTERM, lambda *_: ctx.request_stop("SIGTERM"))

    state, result, error = JobState.succeeded, None, None
    try:
        result = kind.run(params, ctx)
        if ctx.stop_reason and result is None:
            state = JobState.cancelled
    except Stopped as e:
        state, error = JobState.cancelled, str(e)
    except Exception as e:
        traceback.print_exc()
        state, error = JobState.failed, describe_failure(e)
    finally:
        if reporter:
            reporter.close()

    if ctx.stop_reason and ctx.stop_reason != CANCELLED and state != JobState.succeeded:
        # stopped by SIGTERM from a recovering server, or orphaned: the engine decides what comes next
        print(f"stopped ({ctx.stop_reason}); not reporting an end", flush=True)
        return EXIT_ORPHANED
    if not is_main:
        return 0 if state == JobState.succeeded else 1
    from engine.client import ApiError

    try:
        client.finish_job(job.id, job.attempt, state, result=result, error=error)
    except ApiError as e:
        print(f"could not report the end of the job: {e}", file=sys.stderr, flush=True)
        return EXIT_ORPHANED
    print(f"job {job.id} {state}" + (f": {error}" if error else ""), flush=True)
    return 0 if state == JobState.succeeded else 1


def workspace_unseen(settings: Settings) -> str | None:
    """Why this machine cannot see the engine's workspace, or None. A cluster executor names, in
    DERMAE_LAUNCH_FILE, the batch script it wrote into the workspace: a node that lacks it is not on the shared
    filesystem (or sees another copy)."""
    launch_file = os.environ.get("DERMAE_LAUNCH_FILE")
    if not launch_file or Path(launch_file).is_file():
        return None
    return (f"this node ({socket.gethostname()}) cannot see the engine's workspace: {launch_file} is missing. The "
            f"workspace ({settings.workspace}) and the engine's Python environment must be on a filesystem shared "
            "by the engine's machine and the compute nodes, at the same path (README, \"Scale-out\").")


def describe_failure(e: Exception) -> str:
    """The job's error as its users read it: a full disk says what to do, anything else its type and message."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return (f"disk full ({e.strerror}{where}). Free space on the workspace's disk, then Retry: the job resumes "
                "from its last intact checkpoint (a half-written one is discarded, never used).")
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m engine.worker JOB_ID")
    sys.exit(main(int(sys.argv[1])))
