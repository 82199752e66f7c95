"""
A live server with the admin's static files and a headless Chromium, for the browser tests.

Debian's Chromium is driven through Playwright's `executable_path`: Playwright's own browser
downloads cannot be fetched on our machines or CI's. Where no Chromium (or no Playwright)
is installed the tests skip with the reason; with REQUIRE_BROWSER=1 that is an error.
Screenshots go to `artifacts/screenshots/` (see the README), which CI keeps.
"""

import os
import shutil
import unittest

from django.conf import settings
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.urls import reverse

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - only where the dev requirements are not installed
    expect = sync_playwright = None

SCREENSHOT_DIR = settings.BASE_DIR / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Long enough for a slow CI machine, short enough that a wrong selector fails in seconds
# rather than Playwright's default 30.
TIMEOUT_MS = 10_000


def find_chromium() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )


def browser_missing_reason() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if find_chromium() is None:
        return "no Chromium installed (apt-get install chromium)"
    return None


class BrowserTestCase(StaticLiveServerTestCase):
    """One Chromium per class, a fresh browser context (no cookies) per test."""

    @classmethod
    def setUpClass(cls):
        reason = browser_missing_reason()
        if reason is not None:
            if os.environ.get("REQUIRE_BROWSER") == "1":
                raise RuntimeError(f"REQUIRE_BROWSER=1 but the browser tests cannot run: {reason}")
            raise unittest.SkipTest(reason)
        super().setUpClass()
        # Playwright's sync API keeps an event loop running in this thread, and Django refuses
        # ORM calls from a thread with a running loop. The tests' set-up and assertions are
        # plain synchronous code, so that guard does not apply; restored after the class.
        previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        cls.addClassCleanup(_restore_env, "DJANGO_ALLOW_ASYNC_UNSAFE", previous)
        cls.playwright = sync_playwright().start()
        cls.addClassCleanup(cls.playwright.stop)
        cls.browser = cls.playwright.chromium.launch(
            executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        cls.addClassCleanup(cls.browser.close)
        expect.set_options(timeout=TIMEOUT_MS)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)

    def setUp(self):
        super().setUp()
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        self.addCleanup(self.context.close)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)

    def _callTestMethod(self, method):
        # A failing test leaves a picture of where it stopped, beside the others. unittest has
        # no public hook that knows a test failed while its page is still open; this one
        # (Python 3.8+) runs the test body under both runners.
        try:
            super()._callTestMethod(method)
        except Exception:
            try:
                self.screenshot(f"{self._testMethodName}--failed")
            except Exception:  # a crashed page must not hide the test's own error
                pass
            raise

    def url(self, name: str, *args) -> str:
        return self.live_server_url + reverse(name, args=args)

    def screenshot(self, name: str | None = None) -> None:
        self.page.screenshot(path=SCREENSHOT_DIR / f"{name or self._testMethodName}.png", full_page=True)

    def log_in(self, username: str, password: str) -> None:
        """Through the admin's login form, as an operator does; lands on the admin index."""
        page = self.page
        page.goto(self.url("admin:login") + "?next=" + reverse("admin:index"))
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(self.url("admin:index"))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
