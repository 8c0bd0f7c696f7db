"""Real headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by
Playwright, which downloads nothing. Screenshots go to artifacts/screenshots/ (git-ignored)."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = "/usr/bin/chromium"
# Background networking off: this machine's network is closed and Chromium would keep trying.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="needs Debian's chromium at " + CHROMIUM)


@contextlib.contextmanager
def browser_page(monkeypatch, *, base_url: str | None = None) -> Iterator:
    """A fresh page of a fresh browser, 1280x900, 15 s default timeout."""
    # Playwright's sync API keeps an event loop in this thread; the ORM calls a test makes
    # between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()
