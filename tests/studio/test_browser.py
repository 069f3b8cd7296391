"""The studio in a real browser (Debian's chromium through Playwright) against a real engine and a real Streamlit
server: a reviewer signs in, opens a class, accepts with the keyboard, rejects with a reason, undoes; an admin runs a
small blinded Turing session, freezes a dataset version and runs a smoke train chain from the Jobs page to the end —
each checked through the API. Screenshots go to test-artifacts/screenshots/."""

from pathlib import Path

import pytest

from engine.launcher import Launcher
from tests.processes import review_server, wait_until

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")]


def choose(page, selectbox, option: str, tries: int = 3) -> None:
    """Open a selectbox and pick an option. The Jobs page's live list reruns every few seconds; on a loaded
    machine a rerun can close the open list (CI once waited 30 s for an option no longer shown), so the list is
    opened again instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, tries + 1):
        selectbox.click()
        try:
            page.get_by_role("option", name=option).click(timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == tries:
                raise


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("browser") / "ws", {"ann": "reviewer", "ada": "admin"},
                           {"df": 10, "vasc": 4})
    launcher = Launcher()
    try:
        url = launcher.start_studio(server.url, "127.0.0.1", 0)
        yield server, url
    finally:
        launcher.stop_all()  # by PID (process group)
        server.stop()


@pytest.fixture
def page(studio):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox",
                                                                        "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def idle(page) -> None:
    """Wait until Streamlit has finished its rerun (its status widget says 'Running' meanwhile)."""
    page.wait_for_timeout(300)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)


def sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(f"{name}-password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Overview").wait_for()
    idle(page)


def go_to(page, link: str, heading: str) -> None:
    page.get_by_role("link", name=link).click()
    page.get_by_role("heading", name=heading).wait_for()
    idle(page)


def test_sign_in_review_a_class_with_the_keyboard_reject_with_a_reason_and_undo(studio, page):
    server, url = studio
    api = server.client()
    sign_in(page, url, "ann")
    page.screenshot(path=SHOTS / "1-overview.png", full_page=True)

    go_to(page, "Review", "Review")
    choose(page, page.locator(".st-key-review_class"), "df · dermatofibroma")
    idle(page)
    page.get_by_text("synthetic df (1 of 10)").wait_for()
    for width, height in ((1440, 900), (1280, 800)):  # the image being read is large enough to judge
        page.set_viewport_size({"width": width, "height": height})
        idle(page)
        reading = page.get_by_test_id("stImage").filter(has_text="synthetic df (1 of 10)")
        assert "28x28, shown 14x" in reading.inner_text()
        box = reading.locator("img").bounding_box()
        assert box["width"] >= 384 and box["height"] >= 384, (width, box)
    page.set_viewport_size({"width": 1600, "height": 1100})
    idle(page)
    page.screenshot(path=SHOTS / "2-review-df.png", full_page=True)

    def ann_events():
        return api.review_history(reviewer="ann").items

    page.get_by_role("heading", name="Review").click()  # focus out of the class box: shortcuts skip inputs
    for n in (1, 2):  # A accepts the current image and moves on
        page.keyboard.press("a")
        wait_until(lambda n=n: len(ann_events()) == n, timeout=30, what=f"{n} accept(s)")
        idle(page)
    page.locator(".st-key-review_reason_artifact button").click()  # reason 3 by mouse
    idle(page)
    page.locator(".st-key-review_reject button").click()
    wait_until(lambda: len(ann_events()) == 3, timeout=30, what="the rejection")
    idle(page)
    page.get_by_role("heading", name="Review").click()
    page.keyboard.press("x")  # the reason cleared with the decision: X asks for one, records nothing
    page.get_by_text("Choose a reason first").wait_for()
    assert len(ann_events()) == 3
    page.keyboard.press("3")  # reason 3 (artifact) by keyboard, then X
    idle(page)
    page.keyboard.press("x")
    wait_until(lambda: len(ann_events()) == 4, timeout=30, what="the second rejection")
    idle(page)
    page.screenshot(path=SHOTS / "3-after-decisions.png", full_page=True)
    page.get_by_role("heading", name="Review").click()
    page.keyboard.press("u")  # undo the last action: the second rejection
    wait_until(lambda: len(ann_events()) == 5, timeout=30, what="the undo")
    idle(page)
    page.screenshot(path=SHOTS / "4-after-undo.png", full_page=True)

    events = list(reversed(ann_events()))
    assert [e.decision for e in events] == ["accept", "accept", "reject", "reject", "undo"]
    assert events[2].reasons == events[3].reasons == ["artifact"] and events[4].undoes == events[3].seq
    assert {e.reviewer for e in events} == {"ann"}
    stats = api.stats()
    assert stats.synthetic["accepted"]["df"] == 2 and stats.synthetic["rejected"]["df"] == 1
    assert stats.synthetic["pending"]["df"] == 7
    assert len({e.image_id for e in events[:4]}) == 4  # each decision went to the next image in the queue


def test_an_admin_runs_a_turing_session_freezes_a_version_and_trains_from_the_jobs_page(studio, page):
    server, url = studio
    api = server.client()
    sign_in(page, url, "ada")

    go_to(page, "Turing test", "Turing test")
    page.get_by_role("tab", name="Sessions & results").click()
    page.get_by_role("textbox", name="Name").fill("browser pilot")
    page.get_by_label("Number of images").fill("4")
    page.get_by_role("button", name="Create session").click()
    page.get_by_text("Created session").wait_for()
    idle(page)
    [session] = [s for s in api.turing_sessions() if s.name == "browser pilot"]
    page.get_by_role("tab", name="Take the test").click()
    for answered, says in enumerate(("Real", "Synthetic", "Real", "Synthetic"), start=1):
        page.get_by_text(f"{answered} of 4", exact=True).wait_for()  # the image to answer is on screen
        page.get_by_role("button", name=says, exact=True).last.click()  # .last: a rerun's outgoing copy may linger
        wait_until(lambda n=answered: api.turing_results(session.id).overall.n == n, timeout=30,
                   what=f"{answered} answer(s)")
        idle(page)
    page.get_by_text("You have answered all 4 images").wait_for()
    page.get_by_role("tab", name="Sessions & results").click()
    idle(page)
    page.screenshot(path=SHOTS / "5-turing-results.png", full_page=True)
    results = api.turing_results(session.id)
    assert results.overall.n == 4 and set(results.per_reviewer) == {"ada"}

    go_to(page, "Datasets", "Datasets")
    page.get_by_text("Freeze the curated set as a new version").click()
    page.get_by_role("textbox", name="Name").fill("browser")
    page.get_by_role("button", name="Freeze", exact=True).click()
    page.get_by_text("Froze").wait_for()
    idle(page)
    [version] = [v for v in api.datasets() if v.name == "browser"]
    assert version.counts["synthetic"]["train"]["df"] == 2  # ann's two accepts, under the 1-accept policy

    go_to(page, "Jobs", "Jobs")
    page.get_by_text("Start", exact=True).click()
    choose(page, page.get_by_test_id("stSelectbox").first, "smoke")
    idle(page)
    page.get_by_role("tab", name="Train chain").click()
    page.get_by_role("button", name="Start the train chain").click()
    page.get_by_text("Started train-smoke-").wait_for()
    [run_id] = {j.pipeline_id for j in api.jobs(limit=200).items if j.pipeline_id}
    jobs = api.pipeline(run_id).jobs
    assert all(j.params.get("dataset") in (None, version.id) for j in jobs)
    finished = [api.wait_for_job(j.id, timeout=900) for j in jobs]
    assert [j.state for j in finished] == ["succeeded"] * len(jobs), {j.pipeline_key: j.error for j in finished}
    page.get_by_text(f"{len(jobs)}/{len(jobs)} jobs done").first.wait_for(timeout=30_000)  # the live list caught up
    assert page.get_by_text("None", exact=True).count() == 0  # no stray value written by Streamlit's "magic"
    page.screenshot(path=SHOTS / "6-jobs-train-chain-done.png", full_page=True)

    go_to(page, "Runs & models", "Runs & models")  # the newest run is the one just trained
    idle(page)
    page.screenshot(path=SHOTS / "7-runs-and-models.png", full_page=True)
    page.get_by_role("heading", name="Arms on the real test split").wait_for()
    assert run_id in page.content()  # the run picker shows the newest run: the one just trained


def test_at_1280x800_the_action_bar_is_in_view_and_reason_3_by_keyboard_is_recorded(studio, page):
    """Issue 23: the action bar (accept, reject, the six reasons) stays inside the viewport without scrolling, no
    reason is cut off, "?" shows the keys, and a rejection with reason 3 typed on the keyboard is recorded so."""
    server, url = studio
    api = server.client()
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, url, "ada")
    go_to(page, "Review", "Review")
    choose(page, page.locator(".st-key-review_class"), "vasc · Vascular lesions")
    idle(page)
    page.screenshot(path=SHOTS / "8-review-1280x800.png")
    keys = ["review_accept", "review_reject"] + [f"review_reason_{r}" for r in (
        "unrealistic_texture", "wrong_class_features", "artifact", "duplicate", "near_copy", "other")]
    for key in keys:
        button = page.locator(f".st-key-{key} button")
        box = button.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 800 and box["x"] + box["width"] <= 1280, key
        label = button.locator("p").first
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), f"{key}: its label is cut off"
    assert page.get_by_text("Deploy", exact=True).count() == 0  # no Streamlit Deploy menu
    page.get_by_role("heading", name="Review").click()
    page.keyboard.press("?")
    page.get_by_text("choose or drop a reject reason").wait_for()
    current = api.review_queue(label="vasc", sort="oldest", mine=False, limit=100).items
    before = {e.seq for e in api.review_history(reviewer="ada").items}
    page.get_by_role("heading", name="Review").click()
    page.keyboard.press("3")
    idle(page)
    page.keyboard.press("x")
    wait_until(lambda: len(api.review_history(reviewer="ada").items) == len(before) + 1, timeout=30,
               what="the rejection with reason 3")
    [event] = [e for e in api.review_history(reviewer="ada").items if e.seq not in before]
    assert event.decision == "reject" and event.reasons == ["artifact"] and event.label == "vasc"
    assert event.image_id in {i.id for i in current}


CUT_OFF = """() => [...document.querySelectorAll('[data-testid="stMain"] *')]
    .filter(e => e.children.length === 0 && e.innerText && e.innerText.trim()
                 && getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.innerText.trim())"""


@pytest.mark.parametrize("link", ["Overview", "Review", "Readers & agreement", "History", "Turing test",
                                  "Runs & models", "Datasets", "Jobs"])
def test_at_1280_px_no_page_cuts_its_text_off(studio, page, link):
    _, url = studio
    page.set_content('<div data-testid="stMain"><p style="width: 40px; overflow: hidden; white-space: nowrap; '
                     'text-overflow: ellipsis">a label much too long for its box</p></div>')
    assert page.evaluate(CUT_OFF) == ["a label much too long for its box"]  # the check sees a cut-off label
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, url, "ada")
    go_to(page, link, link)
    page.wait_for_timeout(500)
    page.screenshot(path=SHOTS / f"9-{link.split()[0].lower()}-1280.png", full_page=True)
    assert page.evaluate(CUT_OFF) == [], f"{link}: text cut off at 1280 px"
