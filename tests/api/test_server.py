"""The engine server, started for real: health, token auth on every route, OpenAPI, its records."""

import json
import re
import signal
import socket
import stat

import httpx
import pytest

from engine.client import ApiError
from engine.store import LATEST_VERSION
from tests.processes import start_server


def test_health_needs_no_token_and_reports_the_schema(server):
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert response.json()["schema_version"] == LATEST_VERSION


def test_token_file_is_private(server):
    mode = stat.S_IMODE(server.settings.token_path.stat().st_mode)
    assert mode == 0o600
    assert len(server.token) >= 32


def test_server_binds_loopback_and_records_itself(server):
    record = json.loads(server.settings.server_record_path.read_text())
    assert record["pid"] == server.process.pid
    assert record["url"].startswith("http://127.0.0.1:")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0" * 64, path)


def test_every_route_but_health_needs_the_token(server):
    schema = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {server.token}"}).json()
    checked = 0
    for path, methods in schema["paths"].items():
        for method in methods:
            url = server.url + _concrete(path)
            if path in ("/health", "/auth/login"):  # open by design: how you get a session token
                continue
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic eDp5"}):
                response = httpx.request(method, url, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert "api_token" in response.json()["detail"]
            checked += 1
    assert checked >= 6


def test_openapi_is_the_contract(server):
    schema = server.client()._request("GET", "/openapi.json").json()
    assert {"/health", "/imports", "/stats", "/images", "/images/{image_id}"} <= set(schema["paths"])
    assert "Stats" in schema["components"]["schemas"]


def test_stopping_by_pid_removes_the_record_and_a_restart_keeps_the_token(tmp_path):
    first = start_server(tmp_path / "ws")
    token = first.token
    assert first.stop(signal.SIGTERM) == 0
    assert not first.settings.server_record_path.exists()
    second = start_server(tmp_path / "ws")
    try:
        assert second.token == token
    finally:
        second.stop()


def test_a_second_server_on_the_same_workspace_refuses_clearly(server):
    with pytest.raises(RuntimeError, match="Only the engine server opens the database"):
        start_server(server.settings.workspace, timeout=30)


def test_dataset_versions_through_the_api(server, tmp_path):
    from tests import factories

    client = server.client()
    client.import_data("ham10000", str(factories.ham_tree(tmp_path / "ham", n_per_class=4)))
    version = client.freeze_dataset("baseline", "real only")
    assert version.counts["real"]["train"]["nv"] + version.counts["real"]["val"]["nv"] + \
        version.counts["real"]["test"]["nv"] == 4
    assert "synthetic" not in version.counts and version.lineage["review_events"] == 0
    items = client.dataset_manifest(version.id, split="train")
    assert items and all(i.split == "train" and i.source == "real" for i in items)
    assert [v.id for v in client.datasets()] == [version.id]
    with pytest.raises(ApiError) as missing:
        client.dataset("nope")
    assert missing.value.status_code == 404
    with pytest.raises(ApiError) as bad:
        client._request("POST", "/datasets", json={"name": "../x"})
    assert bad.value.status_code == 422
    with pytest.raises(ApiError, match="unknown label 'vasx'") as unknown:
        client._request("POST", "/datasets", json={"name": "capped", "targets": {"vasx": 3}})
    assert unknown.value.status_code == 422


def test_the_listening_socket_says_tcp_so_asyncio_sets_nodelay():
    """With proto 0, asyncio skips TCP_NODELAY and every keep-alive answer waited ~40 ms (bench/review_speed.py)."""
    from engine.api.server import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
