"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload chelsea.png, see a cat class among the bars and the heatmap overlay loaded, on a
phone-sized window; a screenshot is kept in tests/artifacts/ for people to look at. Then how
the page meets failures (server down, busy, files it cannot draw), cancels outdated requests
and keeps its status line, pressed class and drag outline true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import CHROMEDRIVER, CHROMIUM, chromium, have_chromium
from tests.serve_server import httpx, server_process

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


# The page's answers to failures, checked against the real server with window.fetch wrapped in
# the page: a plan per endpoint says how its next calls fail ("network": fetch's TypeError, as
# when the server is down; {status, retryAfter}: a refusal; {delay}: the real answer, late);
# window.calls keeps each call's AbortSignal.
FETCH_STUB = """
const plan = arguments[0];
const real = window.fetch.bind(window);
window.calls = { classify: [], explain: [] };
window.fetch = (url, init = {}) => {
  const kind = String(url).includes("/v1/classify") ? "classify"
    : String(url).includes("/v1/explain") ? "explain" : null;
  if (!kind) return real(url, init);
  window.calls[kind].push(init.signal);
  const step = (plan[kind] || []).shift();
  if (step === "network") return Promise.reject(new TypeError("Failed to fetch"));
  if (step && step.status) {
    return Promise.resolve(new Response(JSON.stringify({ error: step.error }), {
      status: step.status, headers: { "Retry-After": String(step.retryAfter) } }));
  }
  if (step && step.delay) {
    return new Promise((r) => setTimeout(r, step.delay)).then(() => real(url, init));
  }
  return real(url, init);
};
"""


def open_page(browser, server, plan=None):
    """The page, its method menu filled from /v1/models, fetch wrapped as ``plan`` says."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.querySelectorAll('#method option').length > 1")
    )
    if plan is not None:
        browser.execute_script(FETCH_STUB, plan)


def pick(browser, *paths):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def done(browser) -> str:
    """The status line once every card's requests have ended."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 120).until(lambda d: status.text.startswith("Done"))
    return status.text


def card_state(browser, name):
    return browser.execute_script(
        """const c = [...document.querySelectorAll('.card')]
             .find((c) => c.querySelector('.name').textContent === arguments[0]);
           const error = c.querySelector('.error');
           return { error: error.hidden ? null : error.textContent,
                    retry: !c.querySelector('.retry').hidden,
                    caption: c.querySelector('.explained').textContent,
                    labels: [...c.querySelectorAll('.classes .label')].map((e) => e.textContent),
                    pressed: [...c.querySelectorAll('.classes [aria-pressed=true] .label')]
                      .map((e) => e.textContent) };""",
        name,
    )


def test_page_loads_without_console_errors_hides_one_model_and_drops_the_drag_outline(
    server, browser
):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # what earlier tests left
    open_page(browser, server)
    assert not browser.find_element(By.ID, "model-field").is_displayed()  # one model served
    # A drag over header then footer, leaving through both: the outline goes (dragleave's
    # target is never <body> here, where the outline used to stay).
    drag = """const [kind, sel] = arguments;
      document.querySelector(sel).dispatchEvent(new DragEvent(kind, { bubbles: true }));
      return document.body.classList.contains('dragging');"""
    assert browser.execute_script(drag, "dragenter", "header")
    assert browser.execute_script(drag, "dragenter", "footer")
    assert browser.execute_script(drag, "dragleave", "header")  # still inside the window
    assert not browser.execute_script(drag, "dragleave", "footer")
    assert browser.get_log("browser") == []  # no /favicon.ico 404 among them


def test_status_names_skipped_files_counts_failures_and_shows_a_tiff(
    server, browser, photo_paths, tmp_path
):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    notes = [tmp_path / f"notes{i}.txt" for i in range(5)]
    for path in notes:
        path.write_text("not a picture\n")
    open_page(browser, server)
    pick(browser, *notes)
    status = browser.find_element(By.ID, "status")
    assert status.text == ("No image among the files given: 'notes0.txt', 'notes1.txt', "
                           "'notes2.txt' and 2 more.")  # fmt: skip

    tiff, broken = tmp_path / "cat.tiff", tmp_path / "broken.png"
    with Image.open(photo_paths["chelsea"]) as img:
        img.save(tiff)
    broken.write_text("not a picture either\n")
    pick(browser, tiff, broken, notes[0])
    assert done(browser) == ("Done: 2 photos, 1 failed. Skipped, not images: 'notes0.txt'. "
                             "Choose a class to see where the model finds it.")  # fmt: skip
    assert "not an image" in card_state(browser, "broken.png")["error"]
    # The browser cannot draw a TIFF: the server's blend of photo and heatmap is shown instead.
    shown = """const c = [...document.querySelectorAll('.card')]
        .find((c) => c.querySelector('.name').textContent === arguments[0]);
      return [...c.querySelectorAll('img')].filter((i) => getComputedStyle(i).display !== 'none'
        && i.getAttribute('src')).map((i) => [i.className, i.naturalWidth, i.offsetHeight]);"""
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(shown, "cat.tiff"))
    ((kind, width, height),) = browser.execute_script(shown, "cat.tiff")
    assert kind == "photo under" and width == 451 and height > 100
    assert browser.execute_script(shown, "broken.png") == []  # no broken-image icons


def test_a_failed_card_is_retried_and_its_errors_cleared(server, browser, photo_paths):
    """Server unreachable for classify and too busy for explain (Retry-After past the page's
    patience): both messages, the photo counted failed, and Retry brings everything back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    busy = {"status": 429, "retryAfter": 999, "error": "the expensive methods are busy"}
    open_page(browser, server, {"classify": ["network"], "explain": [busy]})
    pick(browser, photo_paths["chelsea"])
    assert done(browser) == "Done: 1 photo, 1 failed."
    card = card_state(browser, "chelsea.png")
    host = server.removeprefix("http://")
    assert card["error"] == (f"cannot reach the kerascope server at {host}: is `kerascope "
                             "serve` still running?\nthe expensive methods are busy")  # fmt: skip
    assert card["retry"] and card["labels"] == [] and card["caption"] == "Heatmap: not available"
    browser.find_element(By.CSS_SELECTOR, ".card .retry").click()
    assert done(browser) == "Done: 1 photo. Choose a class to see where the model finds it."
    card = card_state(browser, "chelsea.png")
    assert card["error"] is None and not card["retry"] and card["labels"][0] in CAT_NAMES
    assert card["caption"].startswith("Grad-CAM: where the model sees")
    WebDriverWait(browser, 10).until(lambda d: card_state(d, "chelsea.png")["pressed"])
    assert card_state(browser, "chelsea.png")["pressed"] == [card["labels"][0]]


def test_a_method_change_brings_back_missing_classes_and_keeps_errors_apart(
    server, browser, photo_paths
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, server, {"classify": ["network"]})
    pick(browser, photo_paths["chelsea"])
    assert done(browser).startswith("Done: 1 photo, 1 failed.")
    card = card_state(browser, "chelsea.png")
    assert card["caption"].startswith("Grad-CAM: where the model sees")  # explain worked...
    assert card["error"].startswith("cannot reach")  # ...and left classify's error alone
    Select(browser.find_element(By.ID, "method")).select_by_value("gradcam++")
    assert done(browser).startswith("Done: 1 photo.")
    card = card_state(browser, "chelsea.png")
    assert card["error"] is None and card["labels"][0] in CAT_NAMES
    assert card["caption"].startswith("Grad-CAM++: where the model sees")


def test_a_busy_server_is_waited_for_then_asked_again(server, browser, photo_paths):
    """A 429 (the expensive methods' quota) with Retry-After: 1: the caption says the page
    waits, then the same request again gets the heatmap."""
    busy = {"status": 429, "retryAfter": 1, "error": "busy"}
    open_page(browser, server, {"explain": [busy]})
    browser.execute_script(
        """window.captions = new Set();
           new MutationObserver(() => document.querySelectorAll('.explained')
             .forEach((e) => window.captions.add(e.textContent)))
             .observe(document.querySelector('#results'), { subtree: true, childList: true });"""
    )
    pick(browser, photo_paths["chelsea"])
    assert done(browser).startswith("Done: 1 photo.")
    captions = browser.execute_script("return [...window.captions]")
    assert "Grad-CAM: the server is busy, waiting for it (trying again in 1 s)…" in captions
    card = card_state(browser, "chelsea.png")
    assert card["error"] is None and card["caption"].startswith("Grad-CAM: where the model sees")
    assert browser.execute_script("return window.calls.explain.length") == 2


def test_a_newer_heatmap_request_aborts_the_older_ones(server, browser, photo_paths):
    open_page(browser, server, {})
    pick(browser, photo_paths["chelsea"])
    done(browser)
    labels = card_state(browser, "chelsea.png")["labels"]
    browser.execute_script(  # five clicks at once: only the last one's answer is wanted
        "const b = document.querySelectorAll('.classes button'); for (const i of [1, 2, 3, 4, 2])"
        " b[i].click();"
    )
    assert done(browser).startswith("Done: 1 photo.")
    aborted = browser.execute_script("return window.calls.explain.map((s) => s.aborted)")
    assert aborted == [False, True, True, True, True, False]  # the first: the photo's own
    card = card_state(browser, "chelsea.png")
    assert card["pressed"] == [labels[2]] and labels[2] in card["caption"]


def test_the_pressed_class_survives_a_fit_change(server, browser, photo_paths):
    """The classes, answered after the heatmap (delayed here), are redrawn with the chosen
    class still pressed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, server, {"classify": [{"delay": 1}, {"delay": 1500}]})
    pick(browser, photo_paths["chelsea"])
    done(browser)
    labels = card_state(browser, "chelsea.png")["labels"]
    browser.find_elements(By.CSS_SELECTOR, ".classes button")[1].click()
    done(browser)
    Select(browser.find_element(By.ID, "fit")).select_by_value("crop")
    done(browser)
    card = card_state(browser, "chelsea.png")
    assert card["caption"].endswith("it saw only the outlined centre crop")
    assert labels[1] in card["caption"] and card["pressed"] == [labels[1]]


def test_a_file_over_the_servers_body_limit_is_refused_before_it_is_sent(server, browser, tmp_path):
    """Before: a 31 MB file was uploaded twice (classify and explain) to get two 413s."""
    limit = httpx.get(server + "/v1/models", timeout=30).json()["max_body_bytes"]
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(limit + 1_000_000)
    open_page(browser, server)
    browser.execute_script(
        "window.__sent = []; const real = window.fetch; window.fetch = "
        "(u, o) => { window.__sent.push(u); return real(u, o); };"
    )
    pick(browser, big)
    assert done(browser).startswith("Done: 1 photo, 1 failed.")
    state = card_state(browser, "big.png")
    assert state["error"] == (f"'big.png' is {(limit + 1e6) / 1e6:.1f} MB; this server takes up "
                              f"to {limit / 1e6:.1f} MB per request (kerascope serve "
                              "--max-body-mb)") and not state["retry"]  # fmt: skip
    assert browser.execute_script("return window.__sent") == []


@pytest.fixture(scope="module")
def expensive_server(tmp_path_factory):
    """A tiny model whose Score-CAM takes seconds (256 channels to mask), the expensive
    methods allowed one image at a time."""
    from tests.test_serve_limits import slow_cam_run

    run_dir = slow_cam_run(tmp_path_factory.mktemp("slowcam"))
    args = ("--model", str(run_dir), "--allow-expensive", "--max-expensive-inflight", "1")
    with server_process(*args) as server:
        yield server.url


def test_expensive_heatmaps_take_turns_within_the_servers_quota(
    expensive_server, browser, photo_paths, tmp_path
):
    """Before: three photos under Score-CAM were sent at once to a server that takes one; two
    came back 429 and Chromium logged each refusal to the console (it logs every non-2xx
    response, handled or not). Now the page sends one at a time and the console stays clean."""
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    models = httpx.get(expensive_server + "/v1/models", timeout=30).json()
    assert models["max_expensive_inflight"] == 1
    photos = [tmp_path / f"cat{i}.png" for i in range(3)]
    for path in photos:
        shutil.copy(photo_paths["chelsea"], path)
    open_page(browser, expensive_server)
    Select(browser.find_element(By.ID, "method")).select_by_value("scorecam")
    browser.execute_script(
        """window.captions = new Set();
           new MutationObserver(() => document.querySelectorAll('.explained')
             .forEach((e) => window.captions.add(e.textContent)))
             .observe(document.querySelector('#results'), { subtree: true, childList: true });
           const real = window.fetch.bind(window);
           Object.assign(window, { sent: 0, inFlight: 0, most: 0 });
           window.fetch = (url, init) => {
             if (!String(url).includes('/v1/explain')) return real(url, init);
             window.sent += 1;
             window.most = Math.max(window.most, ++window.inFlight);
             return real(url, init).finally(() => { window.inFlight -= 1; });
           };"""
    )
    browser.get_log("browser")  # what earlier tests left
    pick(browser, *photos)
    assert done(browser) == "Done: 3 photos. Choose a class to see where the model finds it."
    assert browser.execute_script("return [window.sent, window.most]") == [3, 1]
    captions = browser.execute_script("return [...window.captions]")
    title = browser.execute_script("return methodTitle('scorecam')")
    assert f"{title}: waiting for the other photos (this server computes 1 at a time)…" in captions
    for path in photos:
        assert card_state(browser, path.name)["caption"].startswith(f"{title}: where the model")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_files_the_server_refused_are_not_sent_again_on_a_change(
    server, browser, photo_paths, tmp_path
):
    """Before: each method, fit or model change sent classify and explain again for every file
    the server had refused as unreadable (415, 400), and Chromium logged both refusals to the
    console each time. Now only the photo it could read is asked again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    text, empty = tmp_path / "notes.png", tmp_path / "empty.jpg"
    text.write_text("not a picture\n")
    empty.write_bytes(b"")
    open_page(browser, server)
    browser.execute_script(
        """const real = window.fetch.bind(window);
           window.sent = [];
           window.fetch = (url, init = {}) => {
             if (init.body instanceof FormData) {
               window.sent.push(`${String(url).split('?')[0]} ${init.body.get('file').name}`);
             }
             return real(url, init);
           };"""
    )
    pick(browser, photo_paths["chelsea"], text, empty)
    assert (
        done(browser) == "Done: 3 photos, 2 failed. Choose a class to see where the model finds it."
    )
    errors = {n: card_state(browser, n)["error"] for n in ("notes.png", "empty.jpg")}
    assert "not an image" in errors["notes.png"] and "empty" in errors["empty.jpg"]
    assert not card_state(browser, "notes.png")["retry"]  # refused: trying again cannot help
    browser.execute_script("window.sent = []")
    browser.get_log("browser")  # the first refusals' console lines
    Select(browser.find_element(By.ID, "method")).select_by_value("gradcam++")
    done(browser)
    Select(browser.find_element(By.ID, "fit")).select_by_value("crop")
    assert done(browser).startswith("Done: 3 photos, 2 failed.")
    sent = browser.execute_script("return window.sent")
    assert sorted(sent) == ["/v1/classify chelsea.png", "/v1/explain chelsea.png",
                            "/v1/explain chelsea.png"]  # fmt: skip
    assert {n: card_state(browser, n)["error"] for n in errors} == errors  # still said
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert card_state(browser, "chelsea.png")["caption"].endswith("outlined centre crop")
