"""
Production start-up, as gunicorn and `manage.py check --deploy` see it: a real gunicorn on
a free local port refuses to start with an insecure IoT configuration (the check's id and
message in its log, a non-zero exit) and serves with a good one; the documented production
settings (docs/deploy.md) pass `check --deploy` without an issue and send HSTS.

Every process here gets the production settings from its environment alone
(DJANGO_ENV_FILE empty, so no developer's `.env`), a real secret key and SQLite in a
temporary directory.
"""

import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.test import SimpleTestCase

ROOT = Path(settings.BASE_DIR)
GUNICORN = Path(sys.executable).parent / "gunicorn"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
GOOD_IOT_SECRET = "k3Jq9-2vLx_8RmT4pZc7WnY1bHs6DfGa0eQuVoNiXy"


def free_port() -> int:
    """A port in 18200-18299 that nothing listens on now."""
    for port in range(18200, 18300):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18200-18299")


def documented_production_environment() -> dict:
    """The `env` block under "A production environment behind a TLS proxy", `<...>` filled in."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    section = text.split("### A production environment behind a TLS proxy", 1)[1]
    block = re.search(r"```env\n(.*?)```", section, re.S).group(1)
    environment = {}
    for line in block.splitlines():
        name, _, value = line.partition("=")
        environment[name.strip()] = re.sub(r"<[^>]*>", lambda _: secrets.token_urlsafe(48), value.strip())
    return environment


class ProductionProcessTestCase(SimpleTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="production-start-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def environment(self, **overrides) -> dict:
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings",
            "DJANGO_ENV_FILE": "",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{self.dir}/db.sqlite3",
            "IOT_SYSTEM_SIGNATURE_SECRET": GOOD_IOT_SECRET,
            "IOT_SIGNATURE_VERIFICATION": "true",
            "IOT_SYSTEM_ALLOWED_IPS": "127.0.0.1",
            "LOG_TO_FILE": "false",
            "LOG_DIR": self.dir,
            **overrides,
        }
        return {name: value for name, value in environment.items() if value is not None}


class GunicornStartTests(ProductionProcessTestCase):
    def gunicorn(self, port):
        return [str(GUNICORN), "main_app.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", "2", "--timeout", "30"]

    def assertRefusesToStart(self, check_id, message, **overrides):
        result = subprocess.run(self.gunicorn(free_port()), cwd=ROOT, env=self.environment(**overrides),
                                capture_output=True, text=True, timeout=90)

        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertIn(check_id, result.stderr)
        self.assertIn(message, result.stderr)
        self.assertIn("Refusing to start with an insecure configuration", result.stderr)

    def test_signature_verification_off_stops_gunicorn(self):
        self.assertRefusesToStart("iot.E004", "IoT signature verification is turned off",
                                  IOT_SIGNATURE_VERIFICATION="false")

    def test_a_missing_secret_stops_gunicorn(self):
        self.assertRefusesToStart("iot.E001", "IOT_SYSTEM_SIGNATURE_SECRET is not set", IOT_SYSTEM_SIGNATURE_SECRET=None)

    def test_a_short_secret_stops_gunicorn(self):
        self.assertRefusesToStart("iot.E003", "shorter than 32 characters", IOT_SYSTEM_SIGNATURE_SECRET="x" * 31)

    def test_the_placeholder_secret_stops_gunicorn(self):
        self.assertRefusesToStart("iot.E002", "still the example placeholder",
                                  IOT_SYSTEM_SIGNATURE_SECRET="change-me-to-a-long-random-secret")

    def test_the_documented_production_settings_serve_healthz_with_hsts(self):
        documented = documented_production_environment()
        host = documented["DJANGO_ALLOWED_HOSTS"].split(",")[0]
        # No PostgreSQL here: the rest exactly as documented. /healthz needs no database.
        environment = self.environment(**{**documented, "DATABASE_URL": f"sqlite:///{self.dir}/db.sqlite3"})
        port = free_port()
        server = subprocess.Popen(self.gunicorn(port), cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)

        def stop():
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.communicate()

        self.addCleanup(stop)

        def get(path, **headers):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", path, headers={"Host": host, **headers})
                response = connection.getresponse()
                response.read()
                return response
            finally:
                connection.close()

        deadline = time.monotonic() + 60
        while True:
            self.assertIsNone(server.poll(), "gunicorn exited")
            try:
                plain = get("/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.fail("gunicorn did not serve /healthz within 60 s")
                time.sleep(0.2)

        # The probe over plain HTTP from inside: served, not redirected.
        self.assertEqual(plain.status, 200)
        # Through the TLS proxy (127.0.0.1 is the trusted proxy): HSTS for a year.
        secure = get("/healthz", **{"X-Forwarded-Proto": "https"})
        self.assertEqual(secure.status, 200)
        self.assertEqual(secure.getheader("Strict-Transport-Security"),
                         "max-age=31536000; includeSubDomains; preload")
        # Anything else over plain HTTP goes to HTTPS.
        redirected = get("/admin/login/")
        self.assertEqual(redirected.status, 301)
        self.assertEqual(redirected.getheader("Location"), f"https://{host}/admin/login/")


class DeployCheckTests(ProductionProcessTestCase):
    def manage(self, *arguments, **environment):
        return subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=120)

    def test_check_deploy_with_the_documented_production_settings_reports_nothing(self):
        result = self.manage("check", "--deploy", **self.environment(**documented_production_environment()))

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("System check identified no issues (0 silenced).", result.stdout)
        self.assertEqual(result.stderr.strip(), "")

    def settings_of(self, **environment) -> dict:
        script = (
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
            "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD)"
        )
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=self.environment(**environment),
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        names = ["hsts", "session_secure", "csrf_secure", "redirect", "subdomains", "preload"]
        return dict(zip(names, result.stdout.split(), strict=True))

    def test_behind_the_tls_proxy_hsts_is_a_year_and_cookies_are_secure_by_default(self):
        self.assertEqual(
            self.settings_of(DJANGO_BEHIND_TLS_PROXY="true"),
            {"hsts": "31536000", "session_secure": "True", "csrf_secure": "True", "redirect": "False",
             "subdomains": "False", "preload": "False"},
        )

    def test_without_the_proxy_nothing_changes(self):
        self.assertEqual(
            self.settings_of(),
            {"hsts": "0", "session_secure": "False", "csrf_secure": "False", "redirect": "False",
             "subdomains": "False", "preload": "False"},
        )

    def test_each_one_is_a_setting(self):
        values = self.settings_of(DJANGO_BEHIND_TLS_PROXY="true", DJANGO_HSTS_SECONDS="600",
                                  DJANGO_SECURE_COOKIES="false", DJANGO_SSL_REDIRECT="true",
                                  DJANGO_HSTS_INCLUDE_SUBDOMAINS="true", DJANGO_HSTS_PRELOAD="true")

        self.assertEqual(
            values,
            {"hsts": "600", "session_secure": "False", "csrf_secure": "False", "redirect": "True",
             "subdomains": "True", "preload": "True"},
        )
