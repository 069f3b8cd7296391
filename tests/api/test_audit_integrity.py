"""No API call can change or remove a past review decision: every operation of the OpenAPI schema, fuzzed by
schemathesis with the tokens of an admin, a reviewer who made decisions and the workspace API token, aimed at
the real ids of those decisions, leaves every earlier event exactly as it was. New events may follow (a new
decision, an undo); the store side is tests/store/test_append_only.py."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import review_server, wait_until

pytestmark = pytest.mark.slow

CASES_PER_OPERATION_AND_TOKEN = 4
# Not fuzzed: logout ends the session this test calls with (it changes no decision either way), and an import
# reads whatever folder of this machine a fuzzed path names (tests/api/test_hostile_input.py covers it).
SKIPPED = {("POST", "/auth/logout"), ("POST", "/imports")}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("audit") / "workspace",
                           {"ada": "admin", "rita": "reviewer", "ron": "reviewer"}, per_class={"df": 6, "vasc": 4})
    try:  # a failure while seeding must stop the server too
        rita, ron, ada = (server.signed_in(n) for n in ("rita", "ron", "ada"))
        df, vasc = server.ids["df"], server.ids["vasc"]
        rita.decide(df[:3], "accept")
        rita.decide(vasc[:2], "reject", ["artifact"], note="smeared border")
        ron.decide(df[:2], "accept")
        ron.undo(ron.decide(df[2:4], "reject", ["unrealistic_texture"])[0].seq)
        ada.set_review_policy(2)
        client = server.client()
        # Fuzzed job submissions must not start real work: a selftest holds the only job slot (serve's default) for
        # the whole module, and the job ids fuzzed calls aim at are the finished ones, never this one.
        blocker = client.submit_job("selftest", {"steps": 1_000_000, "step_seconds": 1.0})
        wait_until(lambda: client.job(blocker.id).state == "running", what="the blocker running")
        server.real_ids = {
            "seq": [e.seq for e in client.review_history(limit=1000).items],
            "image_id": df + vasc,
            "job_id": [j.id for j in client.jobs().items if j.id != blocker.id],
        }
        server.tokens = {"admin": ada.http.headers["Authorization"], "reviewer": rita.http.headers["Authorization"],
                         "api token": f"Bearer {server.token}"}
        yield server
    finally:
        server.stop()


def history(server) -> list[dict]:
    return [e.model_dump() for e in server.client().review_history(limit=1000).items]


@settings(max_examples=1, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_api_call_changes_or_removes_a_past_decision(audited, data):
    before = history(audited)
    assert len(before) >= 10
    openapi = audited.client().http.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(openapi)
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        names = [p.name for p in operation.path_parameters]
        for role, token in audited.tokens.items():
            for _ in range(CASES_PER_OPERATION_AND_TOKEN):
                aimed = {n: data.draw(st.sampled_from(audited.real_ids[n])) for n in names if n in audited.real_ids}
                case = data.draw(operation.as_strategy(path_parameters=aimed or None))
                response = case.call(base_url=audited.url, headers={"Authorization": token}, timeout=30)
                assert response.status_code < 500, (role, case.method, case.formatted_path, response.text[:300])
                calls += 1
    # and on purpose, the valid calls closest to a change: undo every past decision, decide the same images
    # again every way, as each role
    for token in audited.tokens.values():
        headers = {"Authorization": token}
        for seq in audited.real_ids["seq"]:
            audited.client().http.post(f"/reviews/{seq}/undo", headers=headers)
        for decision, reasons in (("accept", []), ("reject", ["duplicate"]), ("unsure", [])):
            audited.client().http.post("/reviews", headers=headers, json={
                "image_ids": audited.real_ids["image_id"][:4], "decision": decision, "reasons": reasons})
    after = {e["seq"]: e for e in history(audited)}
    assert len(after) > len(before)  # those calls did write: as new events
    last = max(e["seq"] for e in before)
    for event in before:  # every past event is there, field for field ...
        now = after.get(event["seq"])
        assert now is not None and {**now, "undone_by": None} == {**event, "undone_by": None}, event
        if now["undone_by"] != event["undone_by"]:  # ... except being taken back later, by a new undo event
            assert event["undone_by"] is None and now["undone_by"] > last
            assert after[now["undone_by"]]["undoes"] == event["seq"]
    assert all(seq > last for seq in set(after) - {e["seq"] for e in before})  # anything new comes after
    assert calls >= 150
