"""The index and every report in a real browser (Debian's Chromium driven by Playwright).

Opens results/index.html served by `python -m http.server` and as a file, follows every link,
and fails on a broken link, an image that did not load, or a console error. Skipped when
Chromium or Playwright is missing, unless DIFFREGIMES_BROWSER=required (as in CI).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROKEN_IMAGES = "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package"
    else:
        missing = None if CHROMIUM else "Debian's chromium (apt-get install chromium)"
    if missing:
        if os.environ.get("DIFFREGIMES_BROWSER") == "required":
            pytest.fail(f"browser test required but {missing} is not installed")
        pytest.skip(f"{missing} is not installed")


@pytest.fixture
def served(tiny_run):
    """results/ of the tiny run on an HTTP server bound to the loopback interface."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tiny_run / "results")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def page():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.errors = []
        page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
        page.on("pageerror", lambda err: page.errors.append(str(err)))
        yield page
        browser.close()


def _check_loaded(page, url):
    response = page.goto(url)
    assert response is None or response.ok, f"{url}: HTTP {response.status}"
    page.wait_for_load_state("load")
    assert page.eval_on_selector_all("img", BROKEN_IMAGES) == [], url
    assert page.errors == [], f"{url}: console errors {page.errors}"


@pytest.mark.slow
def test_index_and_every_report_load_over_http(served, page):
    _check_loaded(page, f"{served}/index.html")
    links = page.eval_on_selector_all("a", "links => links.map(a => a.href)")
    assert any(link.endswith("reports/summary.html") for link in links)
    assert sum("/reports/runs/" in link for link in links) == 16
    # the table sorts and filters
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 16
    page.fill("#filter", "mlp")
    assert page.locator("#runs tbody tr:not([hidden])").count() == 4
    page.fill("#filter", "")
    page.click("#runs thead th:nth-child(4)")  # n, ascending
    ns = [
        int(v)
        for v in page.eval_on_selector_all(
            "#runs tbody tr td:nth-child(4)", "cells => cells.map(c => c.dataset.v)"
        )
    ]
    assert ns == sorted(ns)
    for link in links:
        _check_loaded(page, link)


@pytest.mark.slow
def test_index_works_opened_as_a_file(tiny_run, page):
    index = tiny_run / "results" / "index.html"
    _check_loaded(page, index.as_uri())
    first = page.eval_on_selector_all("a", "links => links.map(a => a.href)")[1]
    _check_loaded(page, first)
