"""The studio in a real browser (Debian's chromium through Playwright) against a real engine and a real Streamlit
server: sign in, open a class, accept with the keyboard, reject with a reason, undo — then check the state through
the API. Screenshots go to test-artifacts/screenshots/."""

from pathlib import Path

import pytest

from engine.launcher import Launcher
from tests.processes import review_server, wait_until

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("browser") / "ws", {"ann": "reviewer"}, {"df": 10})
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


def test_sign_in_review_a_class_with_the_keyboard_reject_with_a_reason_and_undo(studio, page):
    server, url = studio
    api = server.client()
    page.goto(url)
    page.get_by_role("textbox", name="Name").fill("ann")
    page.get_by_role("textbox", name="Password").fill("ann-password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Overview").wait_for()
    idle(page)
    page.screenshot(path=SHOTS / "1-overview.png", full_page=True)

    page.get_by_role("link", name="Review").click()
    page.get_by_role("heading", name="Review").wait_for()
    idle(page)
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name="df · dermatofibroma").click()
    idle(page)
    page.get_by_text("10 images match").wait_for()
    page.get_by_text("Current image", exact=True).wait_for()
    page.screenshot(path=SHOTS / "2-review-df.png", full_page=True)

    def ann_events():
        return api.review_history(reviewer="ann").items

    page.get_by_role("heading", name="Review").click()  # focus out of the class box: shortcuts skip inputs
    for n in (1, 2):  # A accepts the current image and moves on
        page.keyboard.press("a")
        wait_until(lambda n=n: len(ann_events()) == n, timeout=30, what=f"{n} accept(s)")
        idle(page)
    page.get_by_role("button", name="artifact", exact=True).click()
    idle(page)
    page.get_by_role("button", name="Reject").click()
    wait_until(lambda: len(ann_events()) == 3, timeout=30, what="the rejection")
    idle(page)
    page.get_by_role("heading", name="Review").click()
    page.keyboard.press("x")  # X rejects the next one with the reasons still chosen
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
