"""Review decisions are append-only events; state, undo, the policy, the queue and history derive from them."""

import time
from datetime import timedelta

import pytest

from engine.store import ReviewConflict, ReviewProblem, Store, UserExists, UserProblem
from engine.store.db import utc_now
from tests.factories import image_row


def sid(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "ws" / "dermae.duckdb")
    store.images.add_rows([image_row(1, "df", "real", "train"),
                           *(image_row(10 + i, "df", "synthetic", None, job=7) for i in range(6)),
                           *(image_row(30 + i, "vasc", "synthetic", None, job=8) for i in range(3))])
    store.images.set_scores(9, [{"image_id": sid(10 + i), "name": "intended_prob", "value": i / 10}
                                for i in range(6)]
                            + [{"image_id": sid(10), "name": "nearest_real_dist", "value": 0.5, "ref": sid(1)}])
    yield store
    store.close()


def reviews_table(store):
    return store.db.cursor().execute("SELECT seq, image_id, reviewer, decision, undoes FROM reviews ORDER BY seq"
                                     ).fetchall()


def test_decisions_are_new_events_and_status_follows_them(store):
    store.reviews.decide([sid(10), sid(11)], "ann", "accept")
    store.reviews.decide([sid(12)], "ann", "reject", ["artifact"])
    statuses = {r["id"]: r["status"] for r in store.reviews.queue(label="df", limit=100)[1]}
    assert statuses[sid(10)] == statuses[sid(11)] == "accepted" and statuses[sid(12)] == "rejected"
    assert statuses[sid(13)] == "pending"
    assert store.images.stats(store.reviews.accepts_needed())["synthetic"]["accepted"]["df"] == 2


def test_a_rejection_needs_a_reason_and_other_needs_a_note(store):
    with pytest.raises(ReviewProblem, match="reason"):
        store.reviews.decide([sid(10)], "ann", "reject")
    with pytest.raises(ReviewProblem, match="note"):
        store.reviews.decide([sid(10)], "ann", "reject", ["other"])
    with pytest.raises(ReviewProblem, match="unknown reason"):
        store.reviews.decide([sid(10)], "ann", "reject", ["ugly"])
    store.reviews.decide([sid(10)], "ann", "reject", ["other"], note="hair artefact across the lesion")
    assert len(reviews_table(store)) == 1


def test_a_bulk_decision_with_one_bad_id_records_nothing(store):
    with pytest.raises(ReviewProblem, match="unknown image"):
        store.reviews.decide([sid(10), sid(999)], "ann", "accept")
    with pytest.raises(ReviewProblem, match="real"):
        store.reviews.decide([sid(10), sid(1)], "ann", "accept")
    assert reviews_table(store) == []


def test_a_bulk_decision_answers_in_the_order_of_its_image_ids(store):
    ids = [sid(12), sid(10), sid(11)]
    events = store.reviews.decide(ids, "ann", "accept")
    assert [e["image_id"] for e in events] == ids and [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_a_retried_request_is_recorded_once(store):
    first = store.reviews.decide([sid(10), sid(11)], "ann", "accept", request_id="req-00000001")
    again = store.reviews.decide([sid(10), sid(11)], "ann", "accept", request_id="req-00000001")
    assert again == first and len(reviews_table(store)) == 2
    with pytest.raises(ReviewConflict, match="already used for other images"):
        store.reviews.decide([sid(12)], "ann", "accept", request_id="req-00000001")
    # the id is the reviewer's own: another reviewer's request with the same id is a decision of theirs
    assert store.reviews.decide([sid(10)], "bob", "reject", ["artifact"], request_id="req-00000001")[0]["seq"] > 2
    assert len(reviews_table(store)) == 3


def test_undo_is_a_new_event_and_restores_the_previous_decision(store):
    first = store.reviews.decide([sid(10)], "ann", "accept")[0]
    second = store.reviews.decide([sid(10)], "ann", "reject", ["artifact"])[0]
    with pytest.raises(ReviewConflict, match="not your current"):
        store.reviews.undo(first["seq"], "ann")  # replaced by the later one
    with pytest.raises(ReviewConflict, match="only they"):
        store.reviews.undo(second["seq"], "bob")
    undo = store.reviews.undo(second["seq"], "ann")
    assert undo["decision"] == "undo" and undo["undoes"] == second["seq"]
    item = store.reviews.queue(me="ann", label="df", limit=1)[1][0]
    assert item["status"] == "accepted" and item["my_decision"] == "accept" and item["my_seq"] == first["seq"]
    with pytest.raises(ReviewConflict):
        store.reviews.undo(second["seq"], "ann")  # twice
    rows = reviews_table(store)
    assert [r[3] for r in rows] == ["accept", "reject", "undo"]  # nothing edited or deleted
    _, history = store.reviews.history(image_id=sid(10))
    assert {e["seq"]: e["undone_by"] for e in history}[second["seq"]] == undo["seq"]


def test_the_policy_needs_k_accepts_and_no_reject(store):
    store.reviews.decide([sid(10), sid(11)], "ann", "accept")
    store.reviews.decide([sid(10)], "bob", "accept")
    store.reviews.decide([sid(11)], "bob", "reject", ["wrong_class_features"])
    assert store.reviews.accepts_needed() == 1
    store.reviews.set_policy("admin", accepts_needed=2)
    statuses = {r["id"]: r["status"] for r in store.reviews.queue(label="df", limit=100)[1]}
    assert statuses[sid(10)] == "accepted" and statuses[sid(11)] == "rejected"
    store.reviews.set_policy("admin", accepts_needed=3)
    assert store.reviews.queue(status="accepted")[0] == 0
    with pytest.raises(ReviewProblem):
        store.reviews.set_policy("admin", accepts_needed=0)


def test_the_queue_filters_sorts_and_pages(store):
    store.reviews.decide([sid(10)], "ann", "accept")
    total, mine = store.reviews.queue(me="ann", label="df", undecided_by_me=True)
    assert total == 5 and sid(10) not in {r["id"] for r in mine}
    total, top = store.reviews.queue(label="df", sort="-intended_prob", limit=2)
    assert total == 6 and [r["intended_prob"] for r in top] == [0.5, 0.4]
    total, page = store.reviews.queue(label="df", sort="-intended_prob", limit=2, offset=2)
    assert [r["intended_prob"] for r in page] == [0.3, 0.2]
    assert store.reviews.queue(min_intended=0.25, max_intended=0.45)[0] == 2
    near = store.reviews.queue(max_nearest=1.0)[1]
    assert [r["nearest_real_id"] for r in near] == [sid(1)]
    assert store.reviews.queue(reviewer="ann")[0] == 1 and store.reviews.queue(generation_job=8)[0] == 3
    assert store.reviews.queue(label="df", offset=100) == (6, [])  # past the end: still says how many
    with pytest.raises(ReviewProblem):
        store.reviews.queue(sort="random")


def test_history_filters_by_reviewer_class_and_time(store):
    store.reviews.decide([sid(10), sid(30)], "ann", "accept")
    store.reviews.decide([sid(31)], "bob", "reject", ["duplicate"])
    assert store.reviews.history(reviewer="ann")[0] == 2
    total, events = store.reviews.history(label="vasc")
    assert total == 2 and {e["reviewer"] for e in events} == {"ann", "bob"}
    assert events[0]["seq"] > events[1]["seq"]  # newest first
    assert store.reviews.history(since=utc_now() + timedelta(minutes=1))[0] == 0
    assert store.reviews.reviewers() == ["ann", "bob"]


def test_accounts_hash_passwords_and_sessions_expire(store):
    user = store.users.add("ann", "correct horse", "reviewer")
    assert user.role == "reviewer"
    with pytest.raises(UserExists):
        store.users.add("ann", "another password", "admin")
    for name, password, role in (("../x", "long enough", "reviewer"), ("bob", "short", "reviewer"),
                                 ("bob", "long enough", "root")):
        with pytest.raises(UserProblem):
            store.users.add(name, password, role)
    stored = store.db.cursor().execute("SELECT password_hash FROM users").fetchone()[0]
    assert b"correct horse" not in bytes(stored)
    assert store.users.authenticate("ann", "wrong") is None and store.users.authenticate("nobody", "x") is None
    token, _ = store.users.start_session(store.users.authenticate("ann", "correct horse"))
    assert store.users.session_user(token).name == "ann"
    stored_tokens = [r[0] for r in store.db.cursor().execute("SELECT token_sha256 FROM sessions").fetchall()]
    assert token not in stored_tokens
    store.users.end_session(token)
    assert store.users.session_user(token) is None
    expired, _ = store.users.start_session(user, ttl=timedelta(seconds=-1))
    assert store.users.session_user(expired) is None
    brief, _ = store.users.start_session(user, ttl=timedelta(milliseconds=300))
    assert store.users.session_user(brief).name == "ann"  # now known without a query ...
    time.sleep(0.4)
    assert store.users.session_user(brief) is None  # ... but not past its expiry


def test_decisions_that_arrive_together_share_one_commit_and_each_stands_or_fails_alone(store):
    """Group commit: 40 requests from 8 threads at once, two of them bad (an unknown image, a real image) and one
    a retry of another's request id in the same group. Every good request is recorded whole and answered with its
    own events; the bad ones fail with their own message and take nothing else down; the retry records nothing."""
    import threading

    from engine.store.reviews import ReviewQueries

    commits = []
    real_commit = ReviewQueries._commit_group
    gate = threading.Barrier(8)

    def counting(self, group):
        commits.append(len(group))
        return real_commit(self, group)

    requests = [([sid(10 + i % 6)], f"r{i % 8}", f"q{i}") for i in range(38)]
    requests += [([sid(10), sid(999)], "r0", "bad-unknown"), ([sid(1)], "r1", "bad-real")]
    answers, errors = {}, {}

    def send(chunk):
        gate.wait()
        for ids, who, rid in chunk:
            try:
                answers[rid] = store.reviews.decide(ids, who, "accept", request_id=rid)
            except ReviewProblem as e:
                errors[rid] = str(e)
            if rid == "q3":  # the same request again, while others are still queued: one record
                answers["q3-again"] = store.reviews.decide(ids, who, "accept", request_id=rid)

    ReviewQueries._commit_group = counting
    try:
        threads = [threading.Thread(target=send, args=(requests[k::8],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ReviewQueries._commit_group = real_commit
    assert set(errors) == {"bad-unknown", "bad-real"}
    assert "unknown image id" in errors["bad-unknown"] and "are real" in errors["bad-real"]
    assert len(answers) == 39 and all(len(events) == 1 for events in answers.values())
    assert answers["q3-again"] == answers["q3"]
    assert all(events == store.reviews.events([e["seq"] for e in events]) for events in answers.values())  # as stored
    recorded = reviews_table(store)
    assert len(recorded) == 38 and {sid(999), sid(1)}.isdisjoint(r[1] for r in recorded)
    assert sorted(e["seq"] for rid, ev in answers.items() if rid != "q3-again" for e in ev) == [r[0] for r in recorded]
    assert sum(commits) == 41 and len(commits) < 41  # some requests shared a commit


def test_one_commit_per_request_when_group_commit_is_off(tmp_path):
    store = Store(tmp_path / "one" / "dermae.duckdb", review_group_commit=1)
    store.images.add_rows([image_row(10 + i, "df", "synthetic", None, job=7) for i in range(3)])
    assert [len(store.reviews.decide([sid(10 + i)], "ann", "accept")) for i in range(3)] == [1, 1, 1]
    store.close()


def test_blind_reading_hides_others_decisions_until_i_have_decided(store):
    store.reviews.decide([sid(10), sid(11)], "ann", "accept")
    store.reviews.decide([sid(12)], "ann", "reject", ["artifact"])
    _, rows = store.reviews.queue(me="bob", label="df", blind=True)
    by_id = {r["id"]: r for r in rows}
    assert all(r["blinded"] and r["status"] is None and r["accepts"] is None and r["reviewers"] is None
               for r in rows)
    assert store.reviews.queue(me="bob", status="accepted", blind=True)[0] == 0  # a status filter tells nothing
    assert store.reviews.queue(me="bob", reviewer="ann", blind=True)[0] == 0
    assert store.reviews.history(blind_for="bob")[0] == 0
    store.reviews.decide([sid(10)], "bob", "reject", ["artifact"])
    _, rows = store.reviews.queue(me="bob", label="df", blind=True)
    by_id = {r["id"]: r for r in rows}
    assert not by_id[sid(10)]["blinded"] and by_id[sid(10)]["reviewers"] == ["ann", "bob"]
    assert by_id[sid(11)]["blinded"]  # still undecided by bob
    assert [e["reviewer"] for e in store.reviews.history(blind_for="bob")[1]] == ["bob", "ann"]
    _, open_rows = store.reviews.queue(me="bob", label="df")  # not blind (e.g. an admin): everything
    assert {r["id"]: r["status"] for r in open_rows}[sid(11)] == "accepted"


def test_the_policy_is_blind_by_default_and_every_change_is_kept_with_who_made_it(store):
    assert store.reviews.policy() | {"changed_at": None} == {"accepts_needed": 1, "blind": True, "changed_by": None,
                                                              "changed_at": None}
    store.reviews.set_policy("ada", accepts_needed=2)
    store.reviews.set_policy("eve", blind=False)
    assert (store.reviews.policy()["accepts_needed"], store.reviews.policy()["blind"]) == (2, False)
    trail = [(p["changed_by"], p["accepts_needed"], p["blind"]) for p in store.reviews.policy_history()]
    assert trail == [("eve", 2, False), ("ada", 2, True)]
