"""Start the product's real processes for tests (on 127.0.0.1, a free port) and stop them by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.client import Client
from engine.settings import Settings


@dataclass
class RunningServer:
    process: subprocess.Popen
    settings: Settings
    url: str
    token: str
    log_path: Path

    def client(self, token: str | None = "default") -> Client:
        return Client(self.url, self.token if token == "default" else token)

    def signed_in(self, name: str) -> Client:
        """A client signed in as `name` (review_server's accounts have the password "<name>-password")."""
        client = Client(self.url, None)
        client.login(name, f"{name}-password")
        return client

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(predicate, timeout: float = 60, what: str = "condition", poll: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned), or raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached in {timeout}s")


# Job processes report and notice a lost server quickly in tests.
FAST_JOB_ENV = {"DERMAE_REPORT_INTERVAL": "0.2", "DERMAE_ORPHAN_TIMEOUT": "10"}


def start_server(workspace: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> RunningServer:
    """`dermae serve --port 0 [args]` in `workspace`; returns once /health answers. The caller's DERMAE_API_URL
    and DERMAE_API_TOKEN are not inherited; `env` may set a token on purpose."""
    workspace.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(workspace)
    log_path = workspace / f"server-{time.monotonic_ns()}.log"
    inherited = {k: v for k, v in os.environ.items() if k not in ("DERMAE_API_URL", "DERMAE_API_TOKEN")}
    env = {**inherited, **FAST_JOB_ENV, **(env or {}), "DERMAE_WORKSPACE": str(workspace)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", "0", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            record = json.loads(settings.server_record_path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("pid") == proc.pid:
            token = env.get("DERMAE_API_TOKEN") or settings.token_path.read_text().strip()
            server = RunningServer(proc, settings, record["url"], token, log_path)
            server.client().wait_until_healthy(timeout=deadline - time.monotonic())
            return server
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"server did not start within {timeout}s:\n{log_path.read_text()}")


def seed_review_workspace(server: RunningServer, per_class: dict[str, int] | None = None) -> dict[str, list[str]]:
    """Real images (a small phantom import) and synthetic ones per class, put in through the same API a generate
    and a score job use (as a running selftest job), with the selector's and the judge's intended-class
    probabilities and nearest-real ids.
    Returns {class: [synthetic ids]} in upload order."""
    from tests.factories import image_bytes

    per_class = per_class or {"df": 12, "vasc": 6}
    client = server.client()
    client.import_data("phantom", phantom_size=70)
    queued = client.submit_job("selftest", {"steps": 100_000, "step_seconds": 0.05})

    def running():
        job = client.job(queued.id)
        return job if job.state == "running" else None

    job = wait_until(running, what="the selftest job running")
    real = client.images(source="real", split="train", limit=1).items[0].id
    ids: dict[str, list[str]] = {}
    for k, (label, n) in enumerate(per_class.items()):
        images = [{"png": image_bytes(1000 * k + i, "PNG", (28, 28)), "label": label, "seed": i, "guidance": 3.0,
                   "steps": 20, "checkpoint": "jobs/0/artifacts/ldm"} for i in range(n)]
        ids[label] = client.add_synthetic(job.id, job.attempt, images)
        client.add_scores(job.id, job.attempt, [
            score for i, image_id in enumerate(ids[label]) for score in (
                {"image_id": image_id, "name": "intended_prob", "value": round(i / n, 3)},
                {"image_id": image_id, "name": "judge_prob", "value": round(1 - i / n, 3)},
                {"image_id": image_id, "name": "judge_class", "value": 0.0, "ref": label},
                {"image_id": image_id, "name": "nearest_real_dist", "value": 1.0 + i, "ref": real},
                {"image_id": image_id, "name": "near_copy", "value": 0.0},
                {"image_id": image_id, "name": "dup_group", "value": -1.0})])
    client.cancel_job(job.id)
    return ids


def review_server(workspace: Path, users: dict[str, str], per_class: dict[str, int] | None = None,
                  env: dict[str, str] | None = None) -> RunningServer:
    """A started server with seed_review_workspace's images (ids on `.ids`) and accounts {name: role}, each with
    the password "<name>-password"."""
    server = start_server(workspace, env=env)
    try:
        server.ids = seed_review_workspace(server, per_class)
        for name, role in users.items():
            server.client().add_user(name, f"{name}-password", role)
    except BaseException:
        server.stop()  # a failed set-up must not leave a server running
        raise
    return server
