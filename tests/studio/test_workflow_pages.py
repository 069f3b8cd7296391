"""The Datasets and Jobs pages through Streamlit's AppTest against a real engine server: what a click does is
checked through the API."""

import contextlib

import pytest

from engine.client import ApiError
from engine.profiles import load_profile
from tests.processes import review_server, wait_until
from tests.studio.apptest import table_with


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("workflow") / "ws", {"ada": "admin", "vic": "viewer"})
    server.signed_in("ada").decide(server.ids["df"][:3], "accept")
    yield server
    server.stop()


def test_datasets_page_freezes_a_capped_version_and_shows_its_lineage(server, app):
    at = app("ada", "pages/datasets.py")
    before = {v.id for v in server.client().datasets()}
    at.toggle(key="datasets_cap_on").set_value(True).run()
    assert at.number_input(key="datasets_cap_df").value == 3  # caps start at what is accepted now
    at.text_input(key="datasets_name").input("from-studio")
    at.text_input(key="datasets_note").input("two df only")
    at.number_input(key="datasets_cap_df").set_value(2)
    at.button(key="datasets_freeze").click().run()
    assert not at.exception, at.exception
    new = [v for v in server.client().datasets() if v.id not in before]
    assert len(new) == 1 and new[0].name == "from-studio" and new[0].note == "two df only"
    assert new[0].counts["synthetic"]["train"]["df"] == 2 and new[0].policy["targets"]["df"] == 2
    assert any(new[0].id in s.value for s in at.success)

    at.selectbox(key="datasets_version").set_value(new[0].id).run()
    versions = table_with(at, "curation")
    assert versions[versions["version"] == new[0].id]["curation"].iloc[0] == \
        "human-reviewed (1 accept(s) and no reject per image)"
    lineage = " ".join(m.value for m in at.markdown)
    assert "review events behind its synthetic images: 2" in lineage  # the accepts of the two kept
    at.button(key="datasets_prepare").click().run()
    assert not at.exception, at.exception
    assert at.session_state["datasets_zip"][0] == new[0].id
    assert at.session_state["datasets_zip"][1][:2] == b"PK"  # a zip, ready for the download button


def test_a_viewer_cannot_freeze_or_start_jobs(app):
    at = app("vic", "pages/datasets.py")
    assert at.button(key="datasets_freeze").disabled
    at.switch_page("pages/jobs.py").run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key and b.key.startswith("jobs_start")]


def test_jobs_page_starts_a_train_chain_with_the_profiles_defaults(server, app, monkeypatch):
    client = server.client()
    version = client.freeze_dataset("for-jobs", "train chain from the studio")
    monkeypatch.setenv("DERMAE_PROFILE", "smoke")
    at = app("ada", "pages/jobs.py")
    assert at.selectbox(key="jobs_profile").value == "smoke"  # DERMAE_PROFILE
    at.selectbox(key="jobs_train_dataset").set_value(version.id).run()
    assert not at.text_area  # typed fields, no raw JSON
    steps = widget_ending(at.number_input, "_mae__steps")
    assert steps.value == 4  # configs/smoke.toml's value
    steps.set_value(6).run()
    at.selectbox(key="jobs_train_step").set_value("teacher").run()  # another step; the change is kept
    assert widget_ending(at.toggle, "_teacher__mixed_precision") is not None
    at.button(key="jobs_start_train").click().run()
    assert not at.exception, at.exception
    run_id = at.session_state["jobs_started"]
    run = client.pipeline(run_id)
    keys = {j.pipeline_key for j in run.jobs}
    assert {"mae", "teacher", "teacher.eval"} <= keys and any(k.startswith("baseline.") for k in keys)
    assert all(j.params.get("dataset") == version.id for j in run.jobs if j.kind in ("pretrain_mae", "distill"))
    mae = next(j for j in run.jobs if j.pipeline_key == "mae")
    assert mae.params["steps"] == 6  # as changed in the form
    teacher = next(j for j in run.jobs if j.pipeline_key == "teacher")
    assert teacher.params["steps"] == load_profile("smoke").params("finetune")["steps"]
    for job in run.jobs:  # not needed further (the browser test runs a chain to the end)
        with contextlib.suppress(ApiError):  # 409: already failed as "upstream failed" by an earlier cancel
            client.cancel_job(job.id)


def widget_ending(widgets, suffix: str):
    """The Jobs form's widget whose key ends so (keys also carry the chain's identity)."""
    return next(w for w in widgets if w.key and w.key.endswith(suffix))


def test_a_parameter_left_empty_stays_unset_where_none_means_something(server, app, monkeypatch):
    """generate's quotas: None means "the planner decides"; an empty box must not send {} (no images at all)."""
    client = server.client()
    monkeypatch.setenv("DERMAE_PROFILE", "smoke")
    at = app("ada", "pages/jobs.py")
    at.selectbox(key="jobs_gen_step").set_value("generate").run()
    assert widget_ending(at.text_input, "_generate__quotas").value == ""
    before = {j.id for j in client.jobs(limit=500).items}
    at.button(key="jobs_start_generator").click().run()
    started = [j for j in client.jobs(limit=500).items if j.id not in before]
    for job in started:  # not needed further
        with contextlib.suppress(ApiError):
            client.cancel_job(job.id)
    [generate] = [j for j in started if j.kind == "generate"]
    assert generate.params.get("quotas") is None


def test_jobs_page_queues_generation_with_the_profiles_per_class_oversampling(server, app, monkeypatch):
    client = server.client()
    monkeypatch.setenv("DERMAE_PROFILE", "tiny")
    at = app("ada", "pages/jobs.py")
    over = at.number_input(key="jobs_generate_over")
    assert over.value == 4.0 and "vasc 8" in over.help  # the form says which classes the profile sets apart
    at.number_input(key="jobs_generate_target").set_value(200)
    at.button(key="jobs_start_generate").click().run()
    assert not at.exception, at.exception
    job = max(client.jobs(kind="generate").items, key=lambda j: j.id)
    assert job.params["target"] == 200 and job.params["class_oversample"] == {"vasc": 8.0}
    with contextlib.suppress(ApiError):  # not needed further; it may have failed already (no model here)
        client.cancel_job(job.id)


def test_jobs_page_cancels_and_retries_the_selected_job(server, app):
    client = server.client()
    job = client.submit_job("selftest", {"steps": 10**6, "step_seconds": 0.05})
    wait_until(lambda: client.job(job.id).state == "running", what="the selftest job running")
    at = app("ada", "pages/jobs.py")
    assert at.selectbox(key="jobs_selected").value is None  # no job chosen for the user
    assert not [b for b in at.button if b.key == "jobs_cancel"]
    at.selectbox(key="jobs_selected").set_value(job.id).run()
    at.button(key="jobs_cancel").click().run()
    assert not at.exception, at.exception
    wait_until(lambda: client.job(job.id).state == "cancelled", what="the job cancelled")
    at.run()
    assert at.button(key="jobs_cancel").disabled and not at.button(key="jobs_retry").disabled
    at.button(key="jobs_retry").click().run()
    assert not at.exception, at.exception
    assert client.job(job.id).state in ("queued", "running")
    assert any("queued again" in s.value for s in at.success)
    assert any("Log" in m.value for m in at.markdown)
    client.cancel_job(job.id)
