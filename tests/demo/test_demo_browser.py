"""The demo in a real browser (Debian's chromium through Playwright): upload a HAM10000 sample image and see the
probabilities, the model's view, the heatmap, the latency and the model card; then pick an example from the
gallery. Screenshot in test-artifacts/screenshots/."""

import re
from pathlib import Path

import pytest

from tests.conftest import HAM_SAMPLE, needs
from tests.demo.conftest import ham_images

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = [pytest.mark.slow, needs(HAM_SAMPLE),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")]


def test_upload_a_ham10000_image_and_see_the_answer(demo):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    image, _cls = next((path, cls) for path, cls in ham_images() if cls == "mel")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox",
                                                                        "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(demo.url)
            page.get_by_text("Research tool, not a diagnostic device").wait_for()
            page.locator("#upload input[type=file]").set_input_files(str(image))
            expect(page.locator("#latency")).to_contain_text("Inference latency", timeout=60_000)
            expect(page.locator("#status")).to_contain_text(re.compile("Most likely|Uncertain"))
            expect(page.locator("#probabilities")).to_contain_text("%")
            page.locator("#model-view img").wait_for()
            page.locator("#heatmap img").wait_for()
            expect(page.locator("#latency")).to_contain_text("Grad-CAM")
            expect(page.locator("#model-card")).to_contain_text("macro-F1")
            expect(page.locator("#model-card")).to_contain_text("Uncertainty threshold")
            page.screenshot(path=SHOTS / "demo-ham10000-upload.png", full_page=True)

            page.locator("#examples .thumbnail-item").first.click()  # an example, picked from the gallery
            expect(page.locator("#status")).to_contain_text("phantom, not clinical data")
            expect(page.locator("#latency")).to_contain_text("Inference latency")
        finally:
            browser.close()
