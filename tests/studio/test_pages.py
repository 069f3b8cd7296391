"""Each studio page's logic through Streamlit's AppTest, against a real engine server (the studio is an API
client, so its state is checked through the API)."""


import pytest
from streamlit.testing.v1 import AppTest

from tests.processes import review_server
from tests.studio.apptest import APP, field, table_with


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("studio") / "ws",
                           {"ann": "reviewer", "bob": "reviewer", "ada": "admin", "vic": "viewer"},
                           {"df": 12, "vasc": 6, "bcc": 3, "bkl": 4})
    yield server
    server.stop()


def test_sign_in_refuses_a_wrong_password_and_accepts_the_right_one(server, monkeypatch):
    monkeypatch.setenv("DERMAE_API_URL", server.url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="sign_in_name").input("ann")
    at.text_input(key="sign_in_password").input("wrong password")
    at.button[0].click().run()
    assert any("wrong name or password" in e.value for e in at.error)
    assert "session" not in at.session_state
    at.text_input(key="sign_in_password").input("ann-password")
    at.button[0].click().run()
    assert at.session_state["session"].user.name == "ann"
    assert at.switch_page("pages/overview.py").run().title[0].value == "Overview"


def test_on_another_address_without_a_token_the_studio_serves_nothing(server, monkeypatch):
    from streamlit import config

    monkeypatch.setenv("DERMAE_API_URL", server.url)
    monkeypatch.delenv("DERMAE_API_TOKEN", raising=False)
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")  # as `streamlit run … --server.address 0.0.0.0` sets it
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
    finally:
        config.set_option("server.address", before)
    assert "refusing to bind 0.0.0.0" in at.error[0].value and not at.text_input


def test_overview_counts_per_class_and_queues_generation_for_the_deficit(server, app):
    at = app("ann")
    assert at.button(key="overview_generate").disabled  # no generator trained or training
    assert any("No generator is trained yet" in i.value for i in at.info)
    captions = " ".join(c.value for c in at.caption)
    [batch] = server.client().imports()
    assert f"Real data: phantom ({batch.n_added} images, lesion-aware split)" in captions
    assert "No generated set has been judged yet" in captions
    # a generator still training (held back behind a job that never ends): generation is chained after it
    blocker = server.client().submit_job("selftest", {"steps": 10**6, "step_seconds": 1})
    ldm = server.client().submit_job("train_ldm", {}, after=[blocker.id])
    at.run()
    table = at.dataframe[0].value
    df_row = table[table["class"] == "df"].iloc[0]
    assert df_row["pending"] == 12 and df_row["real train"] > 0
    assert df_row["still needed"] == df_row["target"] - df_row["real train"] - df_row["accepted"]
    at.radio(key="overview_rule").set_value("fixed").run()
    at.number_input(key="overview_target").set_value(100).run()
    at.button(key="overview_generate").click().run()
    assert server.client().jobs(kind="generate").total == 0  # one click asks first, naming the count and time
    needed = int(table_with(at, "still needed")["still needed"].sum())
    assert any(f"Generate **{needed:,}** images" in w.value and "after a first generation has run" in w.value
               for w in at.warning)
    at.button(key="overview_generate_no").click().run()
    assert not any("Generate **" in w.value for w in at.warning) and server.client().jobs(kind="generate").total == 0
    at.button(key="overview_generate").click().run()
    at.button(key="overview_generate_yes").click().run()
    assert any("Queued generate job" in s.value for s in at.success)
    job = server.client().jobs(kind="generate").items[0]
    assert job.params["rule"] == "fixed" and job.params["target"] == 100 and job.after == [ldm.id]
    for queued in (job, ldm, blocker):
        server.client().cancel_job(queued.id)


def test_review_accept_reject_with_reasons_and_undo_are_the_signed_in_users(server, app):
    at = app("ann", "pages/review.py")
    at.selectbox(key="review_class").select("df").run()
    assert at.session_state["review_cursor"] == 0
    first = server.client().review_queue(label="df", sort="oldest", limit=3).items
    at.button(key="review_accept").click().run()  # no selection: the current image
    events = server.client().review_history(image_id=first[0].id).items
    assert [(e.reviewer, e.decision) for e in events] == [("ann", "accept")]
    at.button(key="review_reject").click().run()
    assert any("Choose a reason first" in w.value for w in at.warning)  # X with no reason asks for one
    assert server.client().review_history(image_id=first[1].id).total == 0
    at.button(key="review_reason_artifact").click().run()  # key 3
    assert at.session_state["review_chosen"] == ["artifact"]
    assert at.button(key="review_reason_artifact").proto.type == "primary"  # the chosen reason shows as chosen
    at.button(key="review_reject").click().run()
    [rejected] = server.client().review_history(image_id=first[1].id).items
    assert rejected.reviewer == "ann" and rejected.reasons == ["artifact"]
    assert at.session_state["review_chosen"] == []  # cleared: the next X cannot reuse it silently
    assert at.button(key="review_reason_artifact").proto.type == "secondary"
    at.button(key="review_reject").click().run()
    assert any("Choose a reason first" in w.value for w in at.warning)
    assert server.client().review_history(image_id=first[2].id).total == 0
    at.button(key="review_undo_button").click().run()
    history = server.client().review_history(image_id=first[1].id).items
    assert history[0].decision == "undo" and history[0].undoes == rejected.seq


def test_every_action_has_its_key_and_the_reasons_are_numbered_on_their_buttons(server, app):
    at = app("ann", "pages/review.py")
    keys = {name: at.button(key=f"review_{name}").proto.shortcut
            for name in ("accept", "reject", "next", "undo_button")}
    assert keys == {"accept": "a", "reject": "x", "next": "n", "undo_button": "u"}
    reasons = ["unrealistic_texture", "wrong_class_features", "artifact", "duplicate", "near_copy", "other"]
    for number, reason in enumerate(reasons, start=1):
        button = at.button(key=f"review_reason_{reason}")
        assert button.proto.shortcut == str(number) and button.label.startswith(f"{number} · ")
    at.button(key="review_keys").click().run()  # "?" presses it in the browser
    shown = " ".join(i.value for i in at.info)
    assert "**X** — reject" in shown and "**1-6** — choose or drop a reject reason" in shown
    at.button(key="review_keys").click().run()
    assert not any("**X** — reject" in i.value for i in at.info)


def test_reading_is_blind_a_second_reviewer_sees_no_first_decision_until_deciding(server, app):
    image = server.client().review_queue(label="bcc", sort="oldest", limit=1).items[0]
    server.signed_in("ann").decide([image.id], "reject", ["artifact"])
    at = app("bob", "pages/review.py")
    at.selectbox(key="review_class").select("bcc").run()
    text = " ".join(m.value for m in at.markdown)
    assert "Blind reading: others' decisions on this image show once you have decided it." in text
    assert "ann" not in text and "reject" not in " ".join(c.value for c in at.caption if "judge" in c.value)
    at.button(key="review_accept").click().run()
    seen = next(i for i in server.signed_in("bob").review_queue(label="bcc", limit=100).items if i.id == image.id)
    assert seen.reviewers == ["ann", "bob"]
    at.toggle(key="review_mine").set_value(False).run()  # bob's decided image, now shown with everyone's
    assert "status **rejected** · 1 accept, 1 reject · ann, bob" in " ".join(m.value for m in at.markdown)


def test_an_empty_page_under_blind_reading_says_why(server, app):
    at = app("bob", "pages/review.py")
    at.selectbox(key="review_class").select("df").run()
    at.segmented_control(key="review_status").set_value("accepted").run()
    assert any("Under blind reading, a status or reviewer filter shows only images you have decided" in i.value
               for i in at.info)


def test_a_bulk_decision_names_its_count_and_waits_for_a_confirmation(server, app):
    at = app("ann", "pages/review.py")
    at.selectbox(key="review_class").select("bkl").run()
    queue = server.client().review_queue(label="bkl", sort="oldest", limit=3).items
    assert not [b for b in at.button if b.key == "review_select_all"]  # the grid is drawn only when asked for
    at.segmented_control(key="review_view").set_value("grid").run()
    at.button(key="review_select_all").click().run()
    at.button(key="review_reason_duplicate").click().run()
    at.button(key="review_reject").click().run()
    assert any(f"Reject **{len(at.session_state['review_confirm']['targets'])}** selected images because "
               "duplicate?" in w.value for w in at.warning)
    assert server.client().review_history(label="bkl").total == 0  # nothing until confirmed
    at.button(key="review_confirm_no").click().run()
    assert server.client().review_history(label="bkl").total == 0 and at.session_state["review_confirm"] is None
    at.button(key="review_reject").click().run()
    count = len(at.session_state["review_confirm"]["targets"])
    assert count >= len(queue) and at.button(key="review_confirm_yes").label == f"Yes, reject {count}"
    at.button(key="review_confirm_yes").click().run()
    events = server.client().review_history(label="bkl", limit=500).items
    assert len(events) == count and {e.reasons[0] for e in events} == {"duplicate"}
    assert at.session_state["review_chosen"] == []


def test_the_page_says_how_many_are_left_and_where_the_next_work_is(server, app):
    at = app("vic", "pages/review.py")
    at.selectbox(key="review_class").select("akiec").run()
    left = server.signed_in("vic").review_progress()
    after = ["bcc", "bkl", "df", "mel", "nv", "vasc"]
    following = next(c for c in after if left[c])
    assert f"**{left['akiec']}** left in your akiec queue · next class with work: **{following}** " \
           f"({left[following]} left)" in at.markdown[0].value


def test_the_image_being_read_leads_with_the_judges_verdict_and_the_selectors_sits_below(server, app):
    at = app("ann", "pages/review.py")
    at.selectbox(key="review_class").select("vasc").run()
    at.toggle(key="review_mine").set_value(False).run()
    first = server.client().review_queue(label="vasc", sort="oldest", limit=1).items[0]
    markdown = " ".join(m.value for m in at.markdown)
    assert f"**Judge** (independent, never selects): intended class **{first.judge_prob:.2f}** (it says vasc)" \
        in markdown
    assert f"selector (reference classifier, ranked the candidates): intended class **{first.intended_prob:.3f}**" \
        in markdown
    at.toggle(key="review_as_model").set_value(True).run()  # real images brought to the synthetic size
    assert not at.exception


def test_a_second_reader_gets_the_images_the_first_already_settled(server, app):
    first_by_ann = server.client().review_history(reviewer="ann", label="df").items[-1]  # oldest first
    at = app("ada", "pages/review.py")
    at.selectbox(key="review_class").select("df").run()
    at.button(key="review_accept").click().run()
    [event] = server.client().review_history(reviewer="ada", label="df").items
    assert event.image_id == first_by_ann.image_id  # so the two readers overlap and agreement can be measured


def test_review_bulk_selection_and_paging_keep_their_place(server, app):
    at = app("ann", "pages/review.py")
    at.selectbox(key="review_class").select("vasc").run()
    at.toggle(key="review_mine").set_value(False).run()
    at.segmented_control(key="review_view").set_value("grid").run()
    at.select_slider(key="review_page_size").set_value(24).run()
    queue = server.client().review_queue(label="vasc", sort="oldest", limit=10).items
    for item in queue[:2]:
        at.checkbox(key=f"select_{item.id}").check()
    at.run()
    at.button(key="review_accept").click().run()
    assert at.button(key="review_confirm_yes").label == "Yes, accept 2"
    at.button(key="review_confirm_yes").click().run()
    decided = {e.image_id for e in server.client().review_history(label="vasc", reviewer="ann").items}
    assert decided == {queue[0].id, queue[1].id}
    at.button(key=f"open_{queue[3].id}").click().run()  # open one: it is read in the one-image view
    assert at.segmented_control(key="review_view").value == "reading"
    assert at.session_state["review_cursor"] == 3


def test_a_viewer_can_look_but_not_decide(app):
    at = app("vic", "pages/review.py")
    assert at.button(key="review_accept").disabled
    assert any("you can look, not decide" in i.value for i in at.info)


def test_agreement_page_lets_an_admin_set_the_policy(server, app):
    at = app("ada", "pages/agreement.py")
    field(at.number_input, "policy_k_").set_value(2)
    next(b for b in at.button if b.label == "Set policy").click().run()
    assert server.client().review_policy().accepts_needed == 2
    assert "**2** accept(s)" in at.markdown[0].value and "Reading is **blind**" in at.markdown[0].value
    server.client().set_review_policy(3)  # another admin changes k meanwhile: this page's k field follows
    at.run()
    field(at.toggle, "policy_blind_").set_value(False)
    next(b for b in at.button if b.label == "Set policy").click().run()
    policy = server.client().review_policy()
    assert not policy.blind and policy.accepts_needed == 3  # only the switch was sent: k is not reverted
    assert "Reading is **open**" in at.markdown[0].value
    server.client().set_review_policy(2)
    trail = table_with(at, "reading")  # the policy's changes, newest first, with who made them
    assert trail["by"].tolist()[:2] == ["ada", "engine"] and trail["reading"].tolist()[:2] == ["open", "blind"]
    server.client().set_review_policy(1, blind=True)
    agreement = table_with(at, "kappa [95% CI]")
    assert agreement["scope"].tolist()[0] == "all classes" and len(agreement) == 8
    mel = agreement[agreement["scope"] == "mel"].iloc[0]
    assert mel["kappa [95% CI]"] == "no image read by two reviewers yet" and mel["agree"] == "–"  # never "None"


def test_history_lists_every_event_newest_first_with_its_lesion_and_reasons_in_words(server, app):
    ann = server.signed_in("ann")
    ann.decide([server.ids["vasc"][-2]], "accept")
    ann.decide([server.ids["vasc"][-1]], "reject", ["near_copy"])
    at = app("ann", "pages/history.py")
    table = at.dataframe[0].value
    assert len(table) == ann.review_history().total >= 2  # blind: the events on images ann has decided
    assert table["#"].is_monotonic_decreasing
    assert table["image"].str.startswith("data:image/").all()  # each row shows its lesion
    assert table.iloc[0]["reasons"] == "near-copy of a real image"  # words, not the stored key
