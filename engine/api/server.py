"""`dermae serve`: open the store (the only process that does), bind, record where we listen, run uvicorn."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import uvicorn

from engine.api.app import create_app
from engine.files import atomic_write_bytes
from engine.jobs.executor import Executor, ExecutorUnusable, LocalExecutor
from engine.jobs.scheduler import Scheduler, SchedulerConfig
from engine.settings import REVIEW_GROUP_COMMIT, Settings, exposure_problem, server_api_token
from engine.store import Store


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio turns on TCP_NODELAY only for sockets that say they are TCP,
    # and without it every keep-alive response waits ~40 ms on the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}. Pick another --port (0 = any free).") from None
    sock.listen(2048)
    return sock


def job_api_url(host: str, port: int, executor: str, job_url: str | None) -> str:
    """Where job processes reach the engine: `job_url` when given; local jobs on this machine use loopback when
    the engine listens on every interface; cluster jobs use this machine's name then."""
    if job_url:
        return job_url.rstrip("/")
    if host in ("0.0.0.0", "::"):
        return f"http://{socket.getfqdn() if executor == 'slurm' else '127.0.0.1'}:{port}"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def make_executor(settings: Settings, executor: str, config: SchedulerConfig, partition: str | None) -> Executor:
    if executor == "local":
        return LocalExecutor(config.max_concurrent, config.cancel_grace)
    if executor == "slurm":
        from engine.jobs.slurm import SlurmExecutor

        # how long a job keeps working, retrying its reports, while the engine is away (restarts, upgrades)
        return SlurmExecutor(settings.workspace, partition,
                             orphan_timeout=float(os.environ.get("DERMAE_ORPHAN_TIMEOUT", "900")))
    raise SystemExit(f"unknown executor {executor!r}: local or slurm")


def serve(settings: Settings, host: str, port: int, log_level: str = "info",
          scheduler_config: SchedulerConfig | None = None, executor: str = "local", partition: str | None = None,
          job_url: str | None = None) -> None:
    """Serve until interrupted. Port 0 picks a free port; the real one is written to server.json. Any address but
    loopback needs DERMAE_API_TOKEN set, and an executor that cannot work as configured refuses to start (both
    SystemExit, saying why)."""
    problem = exposure_problem(host, os.environ.get("DERMAE_API_TOKEN"), "the engine API", "DERMAE_API_TOKEN")
    if problem:
        raise SystemExit(problem)
    config = scheduler_config or SchedulerConfig()
    runner = make_executor(settings, executor, config, partition)
    settings.ensure()
    # fails fast, with advice, if another server holds the database
    store = Store(settings.db_path, review_group_commit=REVIEW_GROUP_COMMIT)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    record = {"url": f"http://{url_host}:{bound_port}", "pid": os.getpid(), "started_at": time.time()}
    jobs_url = job_api_url(host, bound_port, executor, job_url)
    try:
        runner.check(host, jobs_url)
    except ExecutorUnusable as e:
        store.close()
        sock.close()
        raise SystemExit(f"cannot start with --executor {executor}: {e}") from None
    scheduler = Scheduler(store, settings, api_url=jobs_url, api_token=server_api_token(settings), config=config,
                          executor=runner)
    app = create_app(settings, store, scheduler)
    atomic_write_bytes(settings.server_record_path, json.dumps(record).encode())
    print(f"dermae engine listening on {record['url']} (workspace {settings.workspace}; {executor} executor"
          + (f", partition {runner.partition}, jobs reach it at {jobs_url}" if executor == "slurm" else "") + ")",
          flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was in
    # place before it started; ours turns that into a normal return, so the clean-up below runs and exit is 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        # A request head over h11's 16 KiB default is dropped without an answer; 64 KiB leaves room for long id
        # lists in a URL.
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, access_log=False,
                                h11_max_incomplete_event_size=64 * 1024)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        try:  # remove the record only if it is still ours
            if json.loads(settings.server_record_path.read_text()).get("pid") == os.getpid():
                settings.server_record_path.unlink()
        except (OSError, ValueError):
            pass
        store.close()
        sock.close()
