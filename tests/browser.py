"""Headless Chromium for the page tests: Debian's chromium + chromium-driver driven by
Selenium (an explicit driver path, so Selenium Manager never downloads anything), on a
phone-sized window. Chromium keeps its singleton socket under $TMPDIR and left that folder
behind after every run (/tmp/org.chromium.Chromium.*): here $TMPDIR is a folder of its own,
removed afterwards (short: a socket path has at most 107 bytes, and one under a test's
tmp_path was too long for Chromium to start)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
         "--window-size=412,915", "--no-first-run", "--disable-extensions")  # fmt: skip


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Selenium driver whose browser keeps its temporary files to itself; quit after."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (test extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    temp = tempfile.mkdtemp(prefix="kcb", dir="/tmp")
    try:
        service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": temp})
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
