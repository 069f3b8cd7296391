"""Security at the HTTP boundary: sign-in rate limit, roles enforced server-side for every route, body size limit,
CORS closed, and binding anything but loopback only with a token set on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from engine.client import ApiError, Client
from tests.processes import review_server, start_server

pytestmark = pytest.mark.slow

# What a signed-in reviewer may change: decisions, Turing answers, and the team's daily work of generating,
# training and freezing curated versions. Everything else that writes needs an admin (users, imports, the
# policy, the served model, Turing sessions, backups) or a job process; a new endpoint is refused to reviewers
# by this test until someone decides otherwise here.
REVIEWER_WRITES = {("POST", "/reviews"), ("POST", "/reviews/{seq}/undo"), ("POST", "/auth/logout"),
                   ("POST", "/turing/sessions/{session_id}/answers"), ("POST", "/jobs"), ("POST", "/pipelines"),
                   ("POST", "/jobs/{job_id}/cancel"), ("POST", "/jobs/{job_id}/retry"), ("POST", "/datasets")}
# Job processes (the workspace API token) only: no person may forge progress, images, scores or models.
ENGINE_WRITES = {("POST", "/jobs/{job_id}/report"), ("POST", "/jobs/{job_id}/finish"),
                 ("POST", "/jobs/{job_id}/artifacts"), ("POST", "/jobs/{job_id}/synthetic"),
                 ("POST", "/jobs/{job_id}/scores"), ("POST", "/jobs/{job_id}/models")}
OPEN = {("GET", "/health"), ("POST", "/auth/login")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = review_server(tmp_path_factory.mktemp("security") / "workspace",
                            {"ada": "admin", "rita": "reviewer", "vic": "viewer"}, per_class={"df": 3})
    try:
        yield running
    finally:
        running.stop()


def routes(server) -> list[tuple[str, str]]:
    paths = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {server.token}"}).json()
    return sorted((method.upper(), path) for path, ops in paths["paths"].items() for method in ops)


def concrete(path: str) -> str:
    return path.replace("{seq}", "1").replace("{job_id}", "1").replace("{session_id}", "s").replace(
        "{model_id}", "1").replace("{image_id}", "x").replace("{dataset_id}", "d").replace("{artifact_id}", "1")


def status_of(client: Client, method: str, path: str) -> int:
    return client.http.request(method, concrete(path), json={}).status_code


def test_roles_are_enforced_by_the_server_on_every_write(server):
    """The route list comes from the OpenAPI schema, so a new endpoint is checked without editing this test. A
    refused call is 403 before its body is even looked at; an allowed one fails later on the empty body (not 403)."""
    viewer, reviewer, admin = (server.signed_in(n) for n in ("vic", "rita", "ada"))
    writes = [(m, p) for m, p in routes(server) if m not in ("GET", "HEAD") and (m, p) not in OPEN]
    assert len(writes) >= 20 and set(writes) >= ENGINE_WRITES and set(writes) >= REVIEWER_WRITES
    writes.remove(("POST", "/auth/logout"))  # everyone may end their own session (and it would end ours)
    for method, path in writes:
        assert status_of(viewer, method, path) == 403, (method, path)
        allowed_to_reviewer = (method, path) in REVIEWER_WRITES
        assert (status_of(reviewer, method, path) == 403) != allowed_to_reviewer, (method, path)
        assert (status_of(admin, method, path) == 403) == ((method, path) in ENGINE_WRITES), (method, path)
    # and no route deletes anything, for anyone
    assert not [p for m, p in routes(server) if m in ("DELETE", "PATCH")]


def test_sign_in_is_rate_limited_per_account_and_the_window_passes(tmp_path):
    server = start_server(tmp_path / "workspace", env={"DERMAE_SIGNIN_WINDOW": "3"})
    try:
        for name in ("ada", "bob"):
            server.client().add_user(name, f"{name}-password", "reviewer")
        guesser = Client(server.url, None)
        for _ in range(5):
            with pytest.raises(ApiError) as wrong:
                guesser.login("ada", "guess-guess")
            assert wrong.value.status_code == 401
        response = guesser.http.post("/auth/login", json={"name": "ada", "password": "ada-password"})
        assert response.status_code == 429 and "too many failed sign-ins" in response.json()["detail"]
        assert 1 <= int(response.headers["Retry-After"]) <= 3
        Client(server.url, None).login("bob", "bob-password")  # one account's lock leaves the others alone
        time.sleep(3.1)
        Client(server.url, None).login("ada", "ada-password")
    finally:
        server.stop()


def test_the_sign_in_limiter_forgets_old_failures_and_stays_bounded(monkeypatch):
    from engine.api import auth

    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    limiter = auth.SignInLimiter(max_failures=2, window=60)
    limiter.failed("ann", "10.0.0.1")
    limiter.failed("ann", "10.0.0.1")
    assert limiter.retry_after("ann", "10.0.0.2") == 60  # the account is locked from anywhere
    assert limiter.retry_after("bob", "10.0.0.1") == 0  # the address is not, yet (its limit is 10x)
    clock[0] += 61
    assert limiter.retry_after("ann", "10.0.0.1") == 0
    monkeypatch.setattr(auth.SignInLimiter, "MAX_KEYS", 100)
    for i in range(1000):  # a spray of made-up names, ten seconds apart
        clock[0] += 10
        limiter.failed(f"user{i}", "10.0.0.9")
    assert len(limiter._failures) <= 100 + 2 and len(limiter._failures["address:10.0.0.9"]) <= 20


def test_oversized_bodies_are_refused_unread_and_nothing_is_written(server):
    reviewer = server.signed_in("rita")
    before = len(reviewer.review_history(limit=1000).items)
    big = b'{"decisions": [' + b" " * (64 * 1024 * 1024 + 1) + b"]}"
    announced = reviewer.http.post("/reviews", content=big, headers={"Content-Type": "application/json"})
    assert announced.status_code == 413 and "over the limit" in announced.json()["detail"]

    def chunks():  # no Content-Length: the server counts while it reads
        yield b'{"decisions": ['
        for _ in range(65):
            yield b" " * (1024 * 1024)

    chunked = reviewer.http.post("/reviews", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert len(reviewer.review_history(limit=1000).items) == before
    assert server.client().health().status == "ok"


def test_cors_is_closed(server):
    origin = {"Origin": "http://evil.example"}
    preflight = httpx.options(f"{server.url}/reviews", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    read = httpx.get(f"{server.url}/health", headers=origin)
    for response in (preflight, read):
        assert not any(h.lower().startswith("access-control-") for h in response.headers), response.headers


def test_another_address_needs_a_token_set_on_purpose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DERMAE_API_TOKEN"} | {"DERMAE_WORKSPACE": str(tmp_path)}
    for token in (None, "too-short"):
        done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                              env=env | ({"DERMAE_API_TOKEN": token} if token else {}), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and "refusing to bind 0.0.0.0" in done.stderr + done.stdout
        assert "DERMAE_API_TOKEN" in done.stderr + done.stdout
    assert not (tmp_path / "dermae.duckdb").exists()  # refused before anything was opened or written

    token = "t" * 32
    server = start_server(tmp_path / "exposed", "--host", "0.0.0.0", env={"DERMAE_API_TOKEN": token})
    try:
        assert server.token == token and not server.settings.token_path.exists()  # the operator's token only
        assert server.client("u" * 32).http.get("/stats").status_code == 401
        assert server.client().http.get("/stats").status_code == 200
    finally:
        server.stop()
