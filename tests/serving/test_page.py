"""The search page in headless Chromium (Debian's package, driven by Playwright): a person
types a query, drops a photo and names a town, and sees a grid of similar listings; in Sell mode a
seller describes an item and sees a suggested category, a suggested price and priced comparables."""
import json
import os
import re
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


# ---- Sell mode: a seller describes an item and sees a category, a price and priced comparables

POUNDS = re.compile(r"£\s*([\d,]+(?:\.\d+)?)")


def pounds(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in POUNDS.findall(text)]


def sell(page, title="", description="", photo=None, town=""):
    """A fresh page in Sell mode, the form filled in and sent; waits for the answer."""
    page.reload()
    page.click("#tab-sell")
    assert page.locator("#panel-sell").is_visible() and not page.locator("#form").is_visible()
    page.fill("#sell-title", title)
    page.fill("#sell-desc", description)
    if photo is not None:
        page.set_input_files("#sell-photo", str(photo))
        page.wait_for_selector("#sell-preview:not([hidden])")
    page.fill("#sell-near", town)
    page.click("#sell-go")
    page.wait_for_function("!document.getElementById('sell-result').hidden || "
                           "document.getElementById('sell-status').className === 'error'",
                           timeout=30_000)


def shown_price(page):
    """(estimate, low, high) as the page shows them, parsed back from the £ text."""
    estimate = pounds(page.inner_text("#sell-estimate"))
    low_high = pounds(page.inner_text("#sell-range"))
    assert len(estimate) == 1 and len(low_high) == 2, (estimate, low_high)
    return estimate[0], low_high[0], low_high[1]


def test_sell_shows_a_price_a_category_and_priced_comparables(page, bundle_dir):
    photo = sorted((FIXTURE / "images").glob("*.jpg"))[0]
    sell(page, "Oak dining chair", "Solid oak, good condition, collection only", photo,
         "Leeds, West Yorkshire")
    assert page.get_attribute("#sell-status", "class") != "error", page.inner_text("#sell-status")
    estimate, low, high = shown_price(page)
    assert 0 < low <= estimate <= high
    labels = json.loads((bundle_dir / "meta.json").read_text())["labels"]
    assert page.inner_text("#sell-category").strip() in labels
    assert "score" in page.inner_text("#sell-catscore")
    assert "title/description and photo" in page.inner_text("#sell-status")
    comps = page.locator("#sell-grid .comp")
    assert comps.count() > 0
    for comp in comps.all():
        assert comp.locator(".title").inner_text().strip()
        assert pounds(comp.locator(".price").inner_text()), comp.inner_text()
        assert comp.locator(".cat").inner_text().strip()
        assert "km away" in comp.locator(".where").inner_text()
        assert comp.locator("button").count() == 0          # no "More like this" here
    page.wait_for_function("[...document.querySelectorAll('#sell-grid img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
    assert page.locator("#grid .card").count() == 0          # the search grid is left alone
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "sell_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_sell_with_only_a_photo_still_shows_a_price(page):
    photo = sorted((FIXTURE / "images").glob("*.jpg"))[1]
    sell(page, photo=photo)
    assert page.get_attribute("#sell-status", "class") != "error", page.inner_text("#sell-status")
    assert "your photo" in page.inner_text("#sell-status")
    estimate, low, high = shown_price(page)
    assert 0 < low <= estimate <= high
    assert page.locator("#sell-grid .comp").count() > 0


def test_sell_with_an_unknown_town_shows_the_servers_message(page):
    sell(page, "Mountain bike", town="Atlantis, Nowhere")
    assert page.get_attribute("#sell-status", "class") == "error"
    message = page.inner_text("#sell-status")
    assert "location" in message and "Atlantis" in message, message
    assert page.locator("#sell-result").is_hidden()
    assert page.locator("#sell-grid .comp").count() == 0


def test_sell_with_nothing_shows_the_servers_message_and_search_still_works(page):
    sell(page)
    assert page.get_attribute("#sell-status", "class") == "error"
    assert "neither text" in page.inner_text("#sell-status")
    page.click("#tab-search")
    assert page.locator("#form").is_visible() and page.locator("#panel-sell").is_hidden()
    page.fill("#q", "bike")
    page.click("#go")
    page.wait_for_selector("#grid .card", timeout=30_000)
    assert "Looks like" in page.inner_text("#status")
    cards = page.locator("#grid .card")                     # each with its "More like this"
    assert cards.count() == page.locator("#grid .card button.link").count() > 1
    assert page.locator("#grid .comp").count() == 0
