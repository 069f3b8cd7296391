"""The blinded Turing test over HTTP on a real server: readers see a random key and re-encoded pixels only, roles
are enforced, answers belong to the signed-in reader, and each refusal has its status and a message."""

import io

import httpx
import pytest
from PIL import Image

from engine.client import ApiError
from tests.processes import review_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("turing") / "ws",
                           {"ann": "reviewer", "bob": "reviewer", "vic": "viewer", "ada": "admin"})
    yield server
    server.stop()


def new_session(server, **overrides):
    params = {"name": "pilot", "classes": ["df", "vasc"], "n_images": 8, "real_fraction": 0.5, "seed": 1} | overrides
    return server.signed_in("ada").create_turing_session(**params)


def refused(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as e:
        call(*args, **kwargs)
    return e.value


def test_next_is_blinded_no_id_no_file_name_no_provenance_and_one_size(server):
    session = new_session(server)
    ann = server.signed_in("ann")
    everything = server.client().images(limit=1000).items
    ids = [i.id for i in everything] + [i.id[:16] for i in everything]  # never by chance in base64 text
    words = [i.original_name for i in everything if i.original_name] + [
        "images/", ".png", ".jpg", "checkpoint", "seed", "synthetic", "phantom", "generation", "label", "source"]
    token = ann._http.headers["Authorization"]
    sizes, keys = set(), []
    while True:
        response = httpx.get(f"{server.url}/turing/sessions/{session.id}/next", headers={"Authorization": token})
        assert response.status_code == 200, response.text
        body = response.json()
        if body["done"]:
            break
        assert set(body) == {"session_id", "total", "answered", "done", "classes", "ask_class", "ask_realism", "item"}
        assert set(body["item"]) == {"key", "position", "png"}
        assert [i for i in ids if i in response.text] == []
        # words are checked outside the base64 pixels, where a short word could turn up by chance
        fields = repr({**body, "item": {**body["item"], "png": None}}).lower()
        assert [w for w in words if w.lower() in fields] == []
        item = ann.turing_next(session.id).item
        with Image.open(io.BytesIO(item.png)) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert {k: v for k, v in image.info.items() if k not in ("dpi",)} == {}  # no text, EXIF or ICC
            sizes.add(image.size)
        keys.append(item.key)
        ann.turing_answer(session.id, item.key, "real")
    assert len(keys) == 8 and len(set(keys)) == 8
    assert sizes == {(session.image_side, session.image_side)}  # real (64 px) and synthetic (28 px) alike
    assert session.image_side == 28


def test_readers_answer_for_themselves_and_each_has_their_own_order(server):
    session = new_session(server)
    ann, bob = server.signed_in("ann"), server.signed_in("bob")
    first = ann.turing_next(session.id)
    assert (first.total, first.answered, first.item.position) == (8, 0, 1)
    token = ann._http.headers["Authorization"]
    response = httpx.post(f"{server.url}/turing/sessions/{session.id}/answers", headers={"Authorization": token},
                          json={"key": first.item.key, "says": "real", "reviewer": "bob"})
    assert response.status_code == 422  # extra fields are refused: the reader is whoever signed in
    answer = ann.turing_answer(session.id, first.item.key, "synthetic")
    assert (answer.reviewer, answer.says, answer.answered, answer.total) == ("ann", "synthetic", 1, 8)
    assert bob.turing_next(session.id).answered == 0
    ann_order, bob_order = [], []
    for reader, order in ((ann, ann_order), (bob, bob_order)):
        while not (step := reader.turing_next(session.id)).done:
            order.append(step.item.key)
            reader.turing_answer(session.id, step.item.key, "real")
    ann_order.insert(0, first.item.key)
    assert len(ann_order) == 8 and sorted(ann_order) == sorted(bob_order)
    assert ann_order != bob_order  # each reader's own shuffle (one chance in 8! that two coincide)
    listed = {s.id: s for s in bob.turing_sessions()}[session.id]
    assert (listed.n_answers, listed.n_readers, listed.my_answered) == (16, 2, 8)


def test_roles_viewers_cannot_answer_readers_cannot_create_or_see_results(server):
    session = new_session(server)
    vic, ann = server.signed_in("vic"), server.signed_in("ann")
    assert refused(vic.turing_next, session.id).status_code == 403
    assert refused(vic.turing_answer, session.id, "whatever", "real").status_code == 403
    assert refused(server.client().turing_next, session.id).status_code == 403  # the API token is nobody
    assert refused(ann.create_turing_session, "mine", ["df"], 2).status_code == 403
    assert refused(ann.turing_results, session.id).status_code == 403
    assert refused(ann.close_turing_session, session.id).status_code == 403
    seen_by_viewer = {s.id: s for s in vic.turing_sessions()}[session.id]
    assert seen_by_viewer.real_fraction is None  # a reader who knew the ratio could balance their guesses
    assert {s.id: s for s in server.signed_in("ada").turing_sessions()}[session.id].real_fraction == 0.5


def test_refusals_have_their_status_and_say_what_to_do(server):
    session = new_session(server)
    ann, ada = server.signed_in("ann"), server.signed_in("ada")
    for call in (ann.turing_next, ada.turing_results, ada.close_turing_session):
        error = refused(call, 999_999)
        assert error.status_code == 404 and "GET /turing/sessions" in error.detail
    error = refused(ann.turing_answer, session.id, "not-a-key-of-this-session", "real")
    assert error.status_code == 422 and f"/turing/sessions/{session.id}/next" in error.detail
    key = ann.turing_next(session.id).item.key
    ann.turing_answer(session.id, key, "real")
    error = refused(ann.turing_answer, session.id, key, "synthetic")
    assert error.status_code == 409 and "already answered" in error.detail and "next" in error.detail
    error = refused(ada.create_turing_session, "too big", ["df"], 200)
    assert error.status_code == 422 and "fewer images" in error.detail
    assert ada.close_turing_session(session.id).closed
    bob = server.signed_in("bob")
    error = refused(bob.turing_answer, session.id, key, "real")
    assert error.status_code == 409 and "closed" in error.detail and "new session" in error.detail
    assert refused(bob.turing_next, session.id).status_code == 409


def test_results_for_admins_with_the_images_that_fooled_everyone(server):
    session = new_session(server, name="everything looks real", ask_realism=True)
    for name in ("ann", "bob"):
        reader = server.signed_in(name)
        while not (step := reader.turing_next(session.id)).done:
            reader.turing_answer(session.id, step.item.key, "real", realism=4)
    results = server.signed_in("ada").turing_results(session.id)
    overall = results.overall
    assert (overall.n, overall.correct, overall.accuracy) == (16, 8, 0.5)  # right on every real one only
    assert overall.p_value == pytest.approx(1.0) and overall.sensitivity == 0.0 and overall.specificity == 1.0
    assert overall.realism_real == overall.realism_synthetic == 4.0 and overall.class_accuracy is None
    assert set(results.per_reviewer) == {"ann", "bob"} and set(results.per_class) == {"df", "vasc"}
    assert results.per_class["df"].n == 8 and results.agreement["overall"].images == 8
    synthetic = set(server.ids["df"]) | set(server.ids["vasc"])
    assert len(results.fooled) == 4 and {f.image_id for f in results.fooled} <= synthetic
    assert all((f.answers, f.said_real) == (2, 2) for f in results.fooled)
    assert "more than half" in results.fooled_rule
