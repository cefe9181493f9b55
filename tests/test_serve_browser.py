"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload chelsea.png, see a cat class among the bars and the heatmap overlay loaded, on a
phone-sized window; a screenshot is kept in tests/artifacts/ for people to look at."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import CHROMEDRIVER, CHROMIUM, chromium, have_chromium
from tests.serve_server import httpx

ARTIFACTS = Path(__file__).parent / "artifacts"
CAT_NAMES = ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not have_chromium(),
        reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
        "`make install-test` installs them",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")


@pytest.fixture(scope="module")
def server(lite0_server):
    return lite0_server  # the session's default server (conftest)


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_upload_shows_a_cat_and_its_heatmap(server, browser, photo_paths):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    assert "kerascope" in browser.title
    browser.find_element(By.ID, "files").send_keys(str(photo_paths["chelsea"]))
    wait = WebDriverWait(browser, 120)
    card = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, ".card[data-classified][data-explained]"))
    )
    labels = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".classes .label")]
    assert labels and labels[0] in CAT_NAMES, labels
    overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
    wait.until(lambda d: d.execute_script("return arguments[0].complete", overlay))
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 451
    caption = card.find_element(By.CSS_SELECTOR, ".explained").text
    assert caption.startswith("Grad-CAM: where the model sees") and labels[0] in caption
    assert card.find_element(By.CSS_SELECTOR, ".error").get_attribute("hidden") is not None

    # Choose another class with the keyboard: the heatmap is explained for that class.
    second = card.find_elements(By.CSS_SELECTOR, ".classes button")[1]
    browser.execute_script("arguments[0].focus()", second)
    second.send_keys("\n")
    wait.until(lambda d: second.get_attribute("aria-pressed") == "true")
    wait.until(lambda d: labels[1] in card.find_element(By.CSS_SELECTOR, ".explained").text)

    # The page fits a phone-sized window: nothing wider than the viewport.
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")

    from kerascope.files import write_bytes

    ARTIFACTS.mkdir(exist_ok=True)
    shot = write_bytes(ARTIFACTS / "serve-page.png", browser.get_screenshot_as_png())
    assert shot.stat().st_size > 10_000


def test_the_method_menu_offers_every_method_with_cost_and_sanity_note(server, browser):
    """The page's menu is filled from /v1/models: every method of the registry, the ones this
    server refuses disabled, and the chosen one's cost and sanity-check note under it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from kerascope.cam.methods import METHODS

    browser.get(server + "/")
    menu = Select(browser.find_element(By.ID, "method"))
    WebDriverWait(browser, 60).until(lambda d: len(menu.options) == len(METHODS))
    assert [o.get_attribute("value") for o in menu.options] == list(METHODS)
    assert menu.first_selected_option.get_attribute("value") == "gradcam"
    disabled = {o.get_attribute("value") for o in menu.options if not o.is_enabled()}
    (info,) = httpx.get(server + "/v1/models").json()["models"]
    refused = {d["name"] for d in info["method_details"] if not d["allowed"]}
    assert "scorecam" in disabled and disabled == refused  # started without --allow-expensive
    note = browser.find_element(By.ID, "method-note")
    assert note.text == f"Cost per image: {METHODS['gradcam'].cost}."
    menu.select_by_value("layercam")
    assert "Fails the randomisation sanity check" in note.text
    assert "(fails sanity check)" in menu.first_selected_option.text
