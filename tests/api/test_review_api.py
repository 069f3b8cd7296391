"""Sign-in, roles and the review API on a real server: decisions belong to the signed-in user, nothing else."""

import httpx
import pytest

from engine.client import ApiError
from tests.processes import review_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("review") / "ws",
                           {"ann": "reviewer", "bob": "reviewer", "vic": "viewer", "ada": "admin"})
    yield server
    server.stop()


def test_sign_in_gives_a_session_that_sign_out_ends(server):
    client = server.signed_in("ann")
    assert client.me().name == "ann" and client.me().role == "reviewer"
    client.logout()
    with pytest.raises(ApiError) as e:
        client.me()
    assert e.value.status_code == 401
    with pytest.raises(ApiError) as e:
        server.client(token=None).login("ann", "not-her-password")
    assert e.value.status_code == 401 and "users add" in e.value.detail


def test_a_decision_is_attributed_to_the_signed_in_user_not_to_a_name_sent(server):
    ann = server.client(token=None)
    session = ann.login("ann", "ann-password")
    image = server.ids["df"][0]
    # A client cannot claim to be someone else: the body has no reviewer field, and extra fields are refused.
    response = httpx.post(f"{server.url}/reviews", headers={"Authorization": f"Bearer {session.token}"},
                          json={"image_ids": [image], "decision": "accept", "reviewer": "bob"})
    assert response.status_code == 422
    [event] = ann.decide([image], "accept")
    assert event.reviewer == "ann" and event.label == "df"
    assert ann.review_history(image_id=image).items[0].reviewer == "ann"


def test_the_api_token_and_viewers_cannot_decide_and_only_admins_manage(server):
    image = server.ids["df"][1]
    for client, code in ((server.client(), 403), (server.signed_in("vic"), 403)):
        with pytest.raises(ApiError) as e:
            client.decide([image], "accept")
        assert e.value.status_code == code
    ann = server.signed_in("ann")
    with pytest.raises(ApiError) as e:
        ann.add_user("eve", "eve-password", "admin")
    assert e.value.status_code == 403
    with pytest.raises(ApiError) as e:
        ann.set_review_policy(3)
    assert e.value.status_code == 403
    assert server.signed_in("vic").review_queue(label="df").total == 12  # viewers can look


def test_bulk_reject_with_reasons_undo_and_the_queue(server):
    bob = server.signed_in("bob")
    page = bob.review_queue(label="vasc", mine=True, sort="-intended_prob", limit=4)
    assert page.total == 6 and [i.intended_prob for i in page.items] == sorted(
        [i.intended_prob for i in page.items], reverse=True)
    chosen = [i.id for i in page.items[:3]]
    with pytest.raises(ApiError) as e:
        bob.decide(chosen, "reject")
    assert e.value.status_code == 422 and "reason" in e.value.detail
    events = bob.decide(chosen, "reject", ["artifact", "unrealistic_texture"])
    assert [e.reasons for e in events] == [["artifact", "unrealistic_texture"]] * 3
    assert bob.review_queue(label="vasc", mine=True).total == 3
    undo = bob.undo(events[0].seq)
    assert undo.decision == "undo" and undo.undoes == events[0].seq
    assert bob.review_queue(label="vasc", mine=True).total == 4
    with pytest.raises(ApiError) as e:
        bob.undo(events[0].seq)
    assert e.value.status_code == 409
    stats = server.client().stats()
    assert stats.synthetic["rejected"]["vasc"] == 2 and stats.synthetic["pending"]["vasc"] == 4


def test_agreement_and_the_policy(server):
    ann, bob, ada = server.signed_in("ann"), server.signed_in("bob"), server.signed_in("ada")
    images = server.ids["df"][4:10]
    decisions = ["accept", "accept", "reject", "accept", "reject", "accept"]
    for image, decision in zip(images, decisions, strict=True):
        ann.decide([image], decision, ["artifact"] if decision == "reject" else [])
        bob.decide([image], decision, ["artifact"] if decision == "reject" else [])
    row = server.client().agreement()["df"]
    assert row.method == "cohen" and row.images == 6 and row.kappa == pytest.approx(1.0)
    assert ada.set_review_policy(2).accepts_needed == 2
    accepted = {i.id for i in ada.review_queue(label="df", status="accepted", limit=100).items}
    assert accepted == {i for i, d in zip(images, decisions, strict=True) if d == "accept"}  # two accepts each
    assert ada.set_review_policy(1).accepts_needed == 1
    assert set(server.client().reviewers()) >= {"ann", "bob"}


def test_a_page_of_thumbnails_comes_in_one_answer(server):
    client = server.client()
    ids = server.ids["df"][:5]
    batch = client.thumbnails(ids)
    assert list(batch) == ids
    assert all(batch[i] == client.image_bytes(i, thumbnail=True) for i in ids)
    for bad, code in ((["0" * 64], 404), (["../etc/passwd"], 422), ([f"{i:064x}" for i in range(201)], 422)):
        with pytest.raises(ApiError) as e:
            client.thumbnails(bad)
        assert e.value.status_code == code


class LosesFirstAnswer(httpx.HTTPTransport):
    """Delivers the first request, then drops its answer, as a connection cut after the server committed does."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/reviews" and not self.lost:
            response.read()
            self.lost += 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_a_decision_whose_answer_was_lost_is_retried_and_recorded_once(server):
    client = server.signed_in("bob")
    token = client.http.headers["Authorization"]
    client.http._transport = transport = LosesFirstAnswer()  # the same signed-in client, a flaky network
    image = server.ids["df"][5]

    def bobs_events() -> list[int]:
        return [e.seq for e in server.client().review_history(image_id=image, limit=100).items if e.reviewer == "bob"]

    before = bobs_events()
    events = client.decide([image], "reject", ["duplicate"])
    assert transport.lost == 1 and len(events) == 1
    assert bobs_events() == [events[0].seq, *before]  # once, though it reached the server twice
    # the same request id sent again by hand: the same answer, nothing new
    body = {"image_ids": [image], "decision": "accept", "reasons": [], "request_id": "manual-retry-1"}
    first = httpx.post(f"{server.url}/reviews", json=body, headers={"Authorization": token}).json()
    second = httpx.post(f"{server.url}/reviews", json=body, headers={"Authorization": token})
    assert second.status_code == 201 and second.json() == first


def test_reading_is_blind_for_reviewers_not_for_admins_and_the_policy_change_is_on_record(server):
    ann, bob, ada = server.signed_in("ann"), server.signed_in("bob"), server.signed_in("ada")
    assert ann.review_policy().blind  # the default
    image = server.ids["vasc"][0]
    ann.decide([image], "reject", ["artifact"])
    seen_by_bob = next(i for i in bob.review_queue(label="vasc", limit=100).items if i.id == image)
    assert seen_by_bob.blinded and seen_by_bob.status is None and seen_by_bob.reviewers is None
    assert image not in {i.id for i in bob.review_queue(label="vasc", status="rejected", limit=100).items}
    assert all(e.image_id != image for e in bob.review_history(limit=1000).items)
    seen_by_ada = next(i for i in ada.review_queue(label="vasc", limit=100).items if i.id == image)
    assert not seen_by_ada.blinded and seen_by_ada.status == "rejected" and seen_by_ada.reviewers == ["ann"]
    # nor anywhere else: synthetic images by status, a reviewed version's images, a small agreement table
    ann.decide([server.ids["vasc"][2]], "accept")  # so a reviewed version holds a synthetic image
    version = ada.freeze_dataset("blind-check", None)
    assert version.counts["synthetic"]
    for ask in (lambda: bob.manifest(source="synthetic", status="rejected"),
                lambda: bob.dataset_manifest(version.id)):
        with pytest.raises(ApiError) as e:
            ask()
        assert e.value.status_code == 403 and "blind reading is on" in e.value.detail
    assert bob.agreement()["vasc"].table == {} and ada.agreement()["vasc"].table  # admins see it
    bob.decide([image], "accept")
    after = next(i for i in bob.review_queue(label="vasc", limit=100).items if i.id == image)
    assert not after.blinded and after.reviewers == ["ann", "bob"] and after.status == "rejected"
    [mine] = [e for e in bob.review_history(image_id=image).items if e.reviewer == "bob"]
    bob.undo(mine.seq)  # taken back: blind again, in the queue and in the history alike
    assert bob.review_history(image_id=image).total == 0
    assert next(i for i in bob.review_queue(label="vasc", limit=100).items if i.id == image).blinded
    bob.decide([image], "accept")

    assert not ada.set_review_policy(blind=False).blind
    other = server.ids["vasc"][1]
    ann.decide([other], "accept")
    assert next(i for i in bob.review_queue(label="vasc", limit=100).items if i.id == other).reviewers == ["ann"]
    assert ada.set_review_policy(blind=True).blind
    trail = ada.review_policy_history()
    assert [(p.changed_by, p.blind) for p in trail[:2]] == [("ada", True), ("ada", False)]
    with pytest.raises(ApiError) as e:
        ann.set_review_policy(blind=False)
    assert e.value.status_code == 403
