"""The browser and page fixtures of the UI tests (a pytest plugin named in tests/conftest.py).

The browser is the system's Chromium (/usr/bin/chromium, or PERHAP_CHROMIUM) driven by Playwright:
Playwright's own download is not available here, so `playwright install` is never run. A missing
browser or Playwright fails the tests with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("PERHAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the UI tests need Playwright: pip install 'playwright>=1.45' "
                    "(do not run `playwright install`: the tests use Debian's Chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the UI tests need Chromium at {CHROMIUM}: install it with "
                    "`apt-get install -y chromium` (as root), or set PERHAP_CHROMIUM to a Chromium binary")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context a test (clipboard allowed, for "Copy link"); any JavaScript error fails it."""
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"
