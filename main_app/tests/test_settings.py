"""
Start-up refuses bad configuration (STYLE: "a value that does not parse fails at start-up
with the variable's name").

Each case starts a fresh interpreter, as gunicorn or manage.py would, with a controlled
environment. A plain `python -c` is not a test run (settings look for `manage.py test` or
pytest), so the production rules apply. Settings read the repository's `.env` with
overwrite=False, so every variable a case depends on is set explicitly here: a developer's
`.env` can then fill in only variables no case looks at.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase

from main_app import settings as settings_module

REAL_SECRET = "k7Qz1vV9-real-looking-secret-for-start-up-tests-3fJp0Lw2"
IOT_SECRET = "iot-signing-secret-for-start-up-tests-0123456789abcdef"

SETUP_SCRIPT = """
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
call_command("check")
print("DEBUG", settings.DEBUG)
print("ACCESS_MINUTES", settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds() / 60)
print("ENGINE", settings.DATABASES["default"]["ENGINE"])
"""


def run_python(script: str, environment: dict) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter in the project, with exactly `environment`."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


class StartUpTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.log_dir = tempfile.mkdtemp(prefix="settings-test-logs-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.log_dir, ignore_errors=True)
        super().tearDownClass()

    def good_environment(self) -> dict:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": REAL_SECRET,
            "DJANGO_ALLOWED_HOSTS": "chargeghar.example",
            "DATABASE_URL": "sqlite://:memory:",
            "JWT_ACCESS_TOKEN_MINUTES": "60",
            "IOT_SYSTEM_SIGNATURE_SECRET": IOT_SECRET,
            "IOT_SIGNATURE_VERIFICATION": "true",
            "IOT_SYSTEM_ALLOWED_IPS": "203.0.113.10",
            "LOG_TO_FILE": "false",
            "LOG_DIR": self.log_dir,
        }

    def start(self, **overrides) -> subprocess.CompletedProcess:
        return run_python(SETUP_SCRIPT, {**self.good_environment(), **overrides})

    def assertRefused(self, result, variable):
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("ImproperlyConfigured", result.stderr)
        self.assertIn(variable, result.stderr.strip().splitlines()[-1], result.stderr)

    def test_good_production_config_starts_and_passes_checks(self):
        result = self.start()

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("System check identified no issues", result.stdout)
        self.assertIn("DEBUG False", result.stdout)
        self.assertIn("ACCESS_MINUTES 60.0", result.stdout)

    def test_missing_secret_key_with_debug_off_is_refused(self):
        # Empty rather than absent, so a DJANGO_SECRET_KEY in a developer's .env cannot fill it in.
        self.assertRefused(self.start(DJANGO_SECRET_KEY=""), "DJANGO_SECRET_KEY")

    def test_placeholder_secret_key_with_debug_off_is_refused(self):
        result = self.start(DJANGO_SECRET_KEY=settings_module.PLACEHOLDER_SECRET)

        self.assertRefused(result, "DJANGO_SECRET_KEY")

    def test_unparseable_token_lifetime_is_refused_by_name(self):
        self.assertRefused(self.start(JWT_ACCESS_TOKEN_MINUTES="abc"), "JWT_ACCESS_TOKEN_MINUTES")

    def test_unparseable_debug_flag_is_refused_by_name(self):
        self.assertRefused(self.start(DJANGO_DEBUG="maybe"), "DJANGO_DEBUG")

    def test_an_allowlist_entry_that_is_no_address_is_refused_by_name(self):
        for name in ("IOT_SYSTEM_ALLOWED_IPS", "IOT_TRUSTED_PROXIES"):
            with self.subTest(name):
                self.assertRefused(self.start(**{name: "10.0.0.0/8,not-an-address"}), name)

    def test_database_url_that_names_no_supported_database_is_refused_by_name(self):
        for url in ("nonsense://x", ""):
            with self.subTest(url=url):
                result = self.start(DATABASE_URL=url)

                self.assertRefused(result, "DATABASE_URL")


class BooleanVariableTests(SimpleTestCase):
    """`_read(..., "bool", ...)` accepts the usual spellings and refuses everything else."""

    def read(self, raw, default=False):
        with mock.patch.dict(os.environ, {"CHARGEGHAR_TEST_FLAG": raw}):
            return settings_module._read("CHARGEGHAR_TEST_FLAG", "bool", default)

    def test_true_and_false_spellings_are_accepted_in_any_case(self):
        for raw, expected in {
            "true": True,
            "TRUE": True,
            "1": True,
            "yes": True,
            "On": True,
            " true ": True,
            "false": False,
            "False": False,
            "0": False,
            "no": False,
            "OFF": False,
        }.items():
            with self.subTest(raw=raw):
                self.assertIs(self.read(raw, default=not expected), expected)

    def test_anything_else_is_refused_with_the_variable_name(self):
        for raw in ("maybe", "2", "-1", "ok", "y", "enabled", "true-ish"):
            with self.subTest(raw=raw):
                with self.assertRaisesMessage(ImproperlyConfigured, "CHARGEGHAR_TEST_FLAG"):
                    self.read(raw)

    def test_unset_variable_gives_the_default(self):
        with mock.patch.dict(os.environ, {}):
            os.environ.pop("CHARGEGHAR_TEST_FLAG", None)
            self.assertIs(settings_module._read("CHARGEGHAR_TEST_FLAG", "bool", True), True)
            self.assertIs(settings_module._read("CHARGEGHAR_TEST_FLAG", "bool", False), False)

    def test_empty_value_counts_as_unset(self):
        # As django-environ treats an empty string; `IOT_SIGNATURE_VERIFICATION=` must not
        # quietly mean "off".
        self.assertIs(self.read("", default=True), True)
        self.assertIs(self.read("", default=False), False)


class WsgiModuleTests(SimpleTestCase):
    def test_the_wsgi_module_freezes_what_it_loaded_for_the_garbage_collector(self):
        # A full collection walking every module object stalled workers for up to 80 ms.
        script = "import gc, main_app.wsgi; print(gc.get_freeze_count())"
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings",
            "DJANGO_DEBUG": "true",
            "DATABASE_URL": "sqlite://:memory:",
            "LOG_TO_FILE": "false",
        }
        result = run_python(script, environment)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertGreater(int(result.stdout.strip().splitlines()[-1]), 10_000)
