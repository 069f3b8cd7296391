"""The Review page as a reader meets it, in Debian's chromium (Playwright) against a real engine and a real
Streamlit server (issue 23: first load <= 2 s, class change <= 1 s, a decision acknowledged <= 300 ms p95).

A fresh workspace with synthetic images in every class (scored, with nearest real images) and one reviewer. At
1440x900, signed in, it times from the action to the moment the page shows its result:
  - Next (N)        a rerun that decides nothing: the baseline of this run
  - first load      the Review link clicked -> the image being read on screen
  - class change    another class chosen -> that class's image on screen
  - decision        A pressed -> the next image of my queue on screen (the decision is recorded before it)
and prints p50 / p95 / max of each with the ratio of its p50 to the baseline's. Run it alone on the machine.

    python bench/review_browser.py [--per-class 60 --decisions 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.labels import CLASS_NAMES, CLASSES  # noqa: E402
from engine.launcher import Launcher  # noqa: E402
from tests.processes import review_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def reading_caption(page) -> str:
    """The caption of the image being read ("synthetic df (3 of 57) · ..."), or "" while there is none."""
    return page.evaluate("""() => {
        const c = [...document.querySelectorAll('[data-testid="stImageCaption"]')]
            .map(e => e.innerText).find(t => t.startsWith('synthetic '));
        return c || '';
    }""")


def timed(page, act, done, timeout: float = 30) -> float:
    """Seconds from `act()` until `done()` holds, polled every 10 ms."""
    start = time.perf_counter()
    act()
    deadline = start + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the page did not show the result")
        page.wait_for_timeout(10)
    return time.perf_counter() - start


def settle(page) -> None:
    page.wait_for_timeout(300)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)


def choose_class(page, label: str) -> None:
    page.locator(".st-key-review_class").click()
    page.get_by_role("option", name=f"{label} · {CLASS_NAMES[label]}").click()


def row(name: str, seconds: list[float], base: float | None) -> str:
    ms = np.asarray(seconds) * 1000
    p50, p95 = np.percentile(ms, [50, 95])
    ratio = f"{p50 / base:>6.1f}" if base else f"{'1.0':>6}"
    return f"{name:<16} {len(ms):>4} {p50:>8.0f} {p95:>8.0f} {ms.max():>8.0f} {ratio}"


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=60, help="synthetic images per class")
    parser.add_argument("--decisions", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = review_server(Path(tmp) / "ws", {"ann": "reviewer"}, dict.fromkeys(CLASSES, args.per_class))
        launcher = Launcher()
        try:
            url = launcher.start_studio(server.url, "127.0.0.1", 0)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM,
                                            args=["--headless", "--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(60_000)
                figures = measure(page, url, args.decisions)
                browser.close()
        finally:
            launcher.stop_all()
            server.stop()
    base = float(np.percentile(figures["Next (baseline)"], 50)) * 1000
    print(f"\n{'':<16} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 x':>6}")
    for name, seconds in figures.items():
        print(row(name, seconds, None if name.startswith("Next") else base))


def measure(page, url: str, decisions: int) -> dict[str, list[float]]:
    page.goto(url)
    page.get_by_role("textbox", name="Name").fill("ann")
    page.get_by_role("textbox", name="Password").fill("ann-password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Overview").wait_for()
    settle(page)
    figures: dict[str, list[float]] = {"Next (baseline)": [], "first load": [], "class change": [], "decision": []}
    for _ in range(5):  # first load: from another page to the image being read
        page.get_by_role("link", name="Overview").click()
        page.get_by_role("heading", name="Overview").wait_for()
        settle(page)
        figures["first load"].append(timed(page, lambda: page.get_by_role("link", name="Review").click(),
                                           lambda: bool(reading_caption(page))))
        settle(page)
    for label in [*CLASSES[1:], CLASSES[0]] * 2:
        figures["class change"].append(timed(page, lambda label=label: choose_class(page, label),
                                             lambda label=label: reading_caption(page).startswith(
                                                 f"synthetic {label} ")))
        settle(page)
    heading = page.get_by_role("heading", name="Review")
    for _ in range(10):
        heading.click()  # focus out of any input: shortcuts skip them
        before = reading_caption(page)
        figures["Next (baseline)"].append(timed(page, lambda: page.keyboard.press("n"),
                                                lambda before=before: reading_caption(page) not in ("", before)))
        settle(page)
    for _ in range(decisions):
        heading.click()
        before = reading_caption(page)
        figures["decision"].append(timed(page, lambda: page.keyboard.press("a"),
                                         lambda before=before: reading_caption(page) not in ("", before)))
        settle(page)
    return figures


if __name__ == "__main__":
    main()
