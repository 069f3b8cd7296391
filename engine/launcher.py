"""Start the product's processes, wait for them to be ready, and stop every one of them on exit.

Used by `dermae up` and `dermae demo` (engine server, then the studio), and by tests (the Gradio demo too):
nothing they start is left running after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.settings import Settings, exposure_problem


class Launcher:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        # Own process group: a signal to it reaches the child's children (uvicorn workers, streamlit).
        proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True)
        self.processes.append((name, proc))
        return proc

    def start_server(self, settings: Settings, host: str, port: int, timeout: float = 60.0) -> str:
        """Start `dermae serve` for `settings` and return its URL once /health answers."""
        from engine.client import Client

        record = settings.server_record_path
        proc = self.start("engine", [sys.executable, "-m", "engine.cli", "serve", "--host", host,
                                     "--port", str(port)], env={"DERMAE_WORKSPACE": str(settings.workspace)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the engine server exited with code {proc.returncode}; see its output above")
            url = _recorded_url(record, proc.pid)
            if url:
                with Client(url, None, timeout=2) as client:
                    client.wait_until_healthy(timeout=max(1.0, deadline - time.monotonic()))
                return url
            time.sleep(0.1)
        raise TimeoutError(f"the engine server did not become healthy within {timeout:.0f}s")

    def start_studio(self, api: str, host: str, port: int, timeout: float = 60.0) -> str:
        """Start the Streamlit studio against the engine at `api`; return its URL once it answers. Port 0 picks a
        free one."""
        import httpx

        problem = exposure_problem(host, os.environ.get("DERMAE_API_TOKEN"), "the studio", "DERMAE_API_TOKEN")
        if problem:
            raise RuntimeError(problem)
        port = port or free_port(host)
        app = Path(__file__).resolve().parents[1] / "studio" / "app.py"
        proc = self.start("studio", [
            sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",  # no Deploy menu: this is a clinic's tool, not a Streamlit demo
        ], env={"DERMAE_API_URL": api})
        url = f"http://{host}:{port}"
        _wait_until_ready(proc, "the studio", lambda: httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok",
                          timeout)
        return url

    def start_demo(self, host: str, port: int, model: Path | None = None, api: str | None = None,
                   workspace: Path | None = None, args: list[str] | None = None, env: dict[str, str] | None = None,
                   timeout: float = 120.0) -> str:
        """Start the Gradio demo (`python -m studio.demo`) serving the export folder `model`, else the engine's
        served model (the engine at `api` and its `workspace`); return its URL once it answers. Port 0 picks a
        free one. Loading the model comes before the page answers, hence the longer timeout."""
        import httpx

        port = port or free_port(host)
        command = [sys.executable, "-m", "studio.demo", "--host", host, "--port", str(port), *(args or [])]
        if model is not None:
            command += ["--model", str(model)]
        if workspace is not None:
            command += ["--workspace", str(workspace)]
        proc = self.start("demo", command, env={**(env or {}), **({"DERMAE_API_URL": api} if api else {})})
        url = f"http://{host}:{port}"
        _wait_until_ready(proc, "the demo", lambda: httpx.get(f"{url}/gradio_api/info", timeout=2).status_code == 200,
                          timeout)
        return url

    def wait(self) -> int:
        """Block until a process exits (or Ctrl-C); return its exit code."""
        while True:
            for name, proc in self.processes:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}", file=sys.stderr)
                    return proc.returncode
            time.sleep(0.5)

    def stop_all(self, grace: float = 10.0) -> None:
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _recorded_url(record: Path, pid: int) -> str | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data["url"] if data.get("pid") == pid else None


def _wait_until_ready(proc: subprocess.Popen, what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready` until it holds; fail at once if the process exits, or after `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see its output above")
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not answer within {timeout:.0f}s")
