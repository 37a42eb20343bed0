"""The search page in headless Chromium (Debian's package, driven by Playwright): a person
types a query, drops a photo and names a town, and sees a grid of similar listings."""
import os
import shutil
from pathlib import Path

import pytest

from tests.serving.conftest import FIXTURE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("MARKETSEARCH_SCREENSHOTS",
                                  Path(__file__).resolve().parents[2] / "build" / "screenshots"))
# Chromium as root, with nothing reaching for the network (this machine has none).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                 "(pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (make setup-browser)")


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(f"{server.url}/search")
        yield tab
        browser.close()


def test_query_photo_and_town_show_a_grid_of_listings(page):
    photo = sorted((FIXTURE / "images").glob("*.jpg"))[0]
    page.fill("#q", "dining chair")
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#drop img")  # the dropped photo's preview
    page.fill("#near", "Leeds, West Yorkshire")
    page.fill("#k", "8")
    page.click("#go")
    page.wait_for_selector(".card", timeout=30_000)
    cards = page.locator(".card")
    assert cards.count() == 8
    status = page.inner_text("#status")
    assert "Looks like" in status and "fused model" in status, status
    first = cards.nth(0)
    assert first.locator(".title").inner_text().strip()
    assert first.locator(".price").inner_text().startswith("£")
    assert first.locator(".cat").inner_text().strip()
    assert "km away" in first.locator(".where").inner_text()
    # every photo in the grid loaded from /photos/<id>.jpg
    page.wait_for_function("[...document.querySelectorAll('.card img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "search_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_more_like_this_replaces_the_grid(page):
    page.wait_for_selector(".card")
    first_id = page.locator(".card").nth(0).get_attribute("data-product-id")
    page.locator(".card button.link").nth(0).click()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('More like')")
    ids = [c.get_attribute("data-product-id") for c in page.locator(".card").all()]
    assert ids and first_id not in ids


def test_an_empty_search_shows_the_servers_message(page):
    page.reload()
    page.click("#go")
    page.wait_for_function("document.getElementById('status').className === 'error'")
    assert "neither text" in page.inner_text("#status")
    assert page.locator(".card").count() == 0
