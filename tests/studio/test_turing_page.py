"""The Turing test page through Streamlit's AppTest against a real engine server: admins create sessions and read
results, readers answer one blinded image at a time, viewers only look. State is checked through the API."""


import pytest
from streamlit.testing.v1 import AppTest

from tests.processes import review_server

PAGE = "pages/turing.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("turing-page") / "ws",
                           {"ann": "reviewer", "ada": "admin", "vic": "viewer"})
    yield server
    server.stop()


def progress_text(at: AppTest) -> str:
    return at.get("progress")[0].proto.text


def test_an_admin_creates_a_session_with_the_form(server, app):
    at = app("ada")
    at.text_input(key="turing_name").input("form session")
    at.multiselect(key="turing_classes").set_value(["df", "vasc"])
    at.number_input(key="turing_n_images").set_value(8)
    at.slider(key="turing_real_fraction").set_value(0.25)
    at.toggle(key="turing_ask_realism").set_value(True)
    next(b for b in at.button if b.label == "Create session").click().run()
    assert not at.exception, at.exception
    [created] = [s for s in server.signed_in("ada").turing_sessions() if s.name == "form session"]
    assert (created.n_items, created.real_fraction, created.ask_realism, created.ask_class) == (8, 0.25, True, False)
    assert created.classes == ["df", "vasc"] and created.created_by == "ada"
    assert any("2 real : 6 synthetic" in s.value for s in at.success)


def test_a_reader_answers_one_image_at_a_time_with_class_and_realism(server, app):
    session = server.signed_in("ada").create_turing_session("class and realism", ["df", "vasc"], 4, 0.5,
                                                         ask_class=True, ask_realism=True, seed=2)
    at = app("ann")
    at.selectbox(key="turing_take_session").select(session.id).run()
    assert progress_text(at) == "1 of 4"
    at.button(key="turing_real").click().run()
    assert any("Choose the class first" in e.value for e in at.error)  # nothing recorded without the class
    assert server.signed_in("ada").turing_results(session.id).overall.n == 0
    at.selectbox(key="turing_class").select("vasc")
    at.select_slider(key="turing_realism").set_value(5)
    at.button(key="turing_synthetic").click().run()
    assert not at.exception, at.exception
    results = server.signed_in("ada").turing_results(session.id)
    assert results.readers == ["ann"] and results.overall.n == 1 and results.overall.class_guesses == 1
    assert {results.overall.realism_real, results.overall.realism_synthetic} == {5.0, None}
    assert progress_text(at) == "2 of 4"
    assert any("You have answered 1 of 4 images" in c.value for c in at.caption)  # the count beside the picker
    assert at.selectbox(key="turing_class").value is None  # fresh widgets for the next image
    assert at.select_slider(key="turing_realism").value == 3
    for _ in range(3):
        at.selectbox(key="turing_class").select("df")
        at.button(key="turing_real").click().run()
    assert any("answered all 4 images" in s.value for s in at.success)
    assert server.signed_in("ada").turing_results(session.id).per_reviewer["ann"].n == 4


def test_results_show_chance_agreement_and_the_fooled_images_and_close(server, app):
    session = server.signed_in("ada").create_turing_session("all real", ["df", "vasc"], 4, 0.5, seed=3)
    reader = server.client(token=None)
    reader.login("ann", "ann-password")
    while not (step := reader.turing_next(session.id)).done:
        reader.turing_answer(session.id, step.item.key, "real")
    at = app("ada")
    at.selectbox(key="turing_results_session").select(session.id).run()
    assert any("vs 50% chance" in m.value and "of 4 answers right" in m.value for m in at.markdown)
    per_class, per_reader = at.dataframe[1].value, at.dataframe[2].value
    assert per_class["class"].tolist() == ["df", "vasc"] and "p vs 50% chance" in per_class.columns
    assert per_reader["reader"].tolist() == ["ann"] and per_reader["accuracy"].tolist() == ["50%"]
    assert any("fooled the readers** (2)" in m.value for m in at.markdown)  # one reader: 1 answer is enough
    at.button(key="turing_close").click().run()
    assert {s.id: s for s in server.signed_in("ada").turing_sessions()}[session.id].closed


def test_a_viewer_can_look_but_not_take_the_test(app):
    at = app("vic")
    assert any("you can look, not take the test" in i.value for i in at.info)
    assert not [b for b in at.button if b.key in ("turing_real", "turing_synthetic")]
    assert not [b for b in at.button if b.label == "Create session"]
