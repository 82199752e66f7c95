"""
Start-up refuses bad configuration (STYLE: "a value that does not parse fails at start-up
with the variable's name"), and which settings and env file each process gets.

Each start-up case starts a fresh interpreter, as gunicorn or manage.py would, with exactly
the environment it names: the production settings (main_app.settings) and DJANGO_ENV_FILE
empty, so a developer's `.env` is never read, here or in the child.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase

import manage
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
    return run(["-c", script], environment)


def run(arguments: list[str], environment: dict) -> subprocess.CompletedProcess:
    """A fresh interpreter in the project with `arguments`, and exactly `environment`."""
    return subprocess.run(
        [sys.executable, *arguments],
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
            "DJANGO_ENV_FILE": "",
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
        """The good environment with `overrides`; a value of None removes the variable."""
        environment = {**self.good_environment(), **overrides}
        return run_python(SETUP_SCRIPT, {k: v for k, v in environment.items() if v is not None})

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
        for value in (None, ""):
            with self.subTest(DJANGO_SECRET_KEY=value):
                self.assertRefused(self.start(DJANGO_SECRET_KEY=value), "DJANGO_SECRET_KEY")

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
            "DJANGO_ENV_FILE": "",
            "DJANGO_DEBUG": "true",
            "DATABASE_URL": "sqlite://:memory:",
            "LOG_TO_FILE": "false",
        }
        result = run_python(script, environment)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertGreater(int(result.stdout.strip().splitlines()[-1]), 10_000)


class EnvFileTests(SimpleTestCase):
    """DJANGO_ENV_FILE: unset reads the `.env` beside manage.py, empty reads none, a path that file."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="settings-test-env-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def test_unset_means_the_env_file_beside_manage_py_when_there_is_one(self):
        self.assertIsNone(settings_module.resolve_env_file(None, self.dir))
        (self.dir / ".env").write_text("LOG_LEVEL=DEBUG\n")
        self.assertEqual(settings_module.resolve_env_file(None, self.dir), self.dir / ".env")

    def test_empty_means_no_file_even_when_there_is_one(self):
        (self.dir / ".env").write_text("LOG_LEVEL=DEBUG\n")
        for value in ("", "  "):
            with self.subTest(value=value):
                self.assertIsNone(settings_module.resolve_env_file(value, self.dir))

    def test_a_path_means_that_file(self):
        named = self.dir / "production.env"
        named.write_text("LOG_LEVEL=DEBUG\n")
        self.assertEqual(settings_module.resolve_env_file(str(named), self.dir), named)

    def test_a_path_that_does_not_exist_is_refused_by_name(self):
        with self.assertRaisesMessage(ImproperlyConfigured, "DJANGO_ENV_FILE"):
            settings_module.resolve_env_file(str(self.dir / "missing.env"), self.dir)

    def environment(self, **variables) -> dict:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DATABASE_URL": "sqlite://:memory:",
            "LOG_TO_FILE": "false",
            **variables,
        }

    def test_the_production_settings_read_the_named_file_and_the_environment_wins(self):
        named = self.dir / "deploy.env"
        named.write_text(f"DJANGO_SECRET_KEY={REAL_SECRET}\nJWT_ACCESS_TOKEN_MINUTES=42\nLOG_LEVEL=DEBUG\n")
        script = (
            "import django; django.setup(); from django.conf import settings; "
            f"print(settings.SECRET_KEY == {REAL_SECRET!r}, "
            "settings.SIMPLE_JWT['ACCESS_TOKEN_LIFETIME'].total_seconds() / 60, settings.LOG_LEVEL)"
        )
        result = run_python(script, self.environment(
            DJANGO_SETTINGS_MODULE="main_app.settings", DJANGO_ENV_FILE=str(named), LOG_LEVEL="WARNING",
        ))

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["True", "42.0", "WARNING"])

    def test_the_production_settings_refuse_a_named_file_that_does_not_exist(self):
        result = run_python("import django; django.setup()", self.environment(
            DJANGO_SETTINGS_MODULE="main_app.settings", DJANGO_ENV_FILE=str(self.dir / "missing.env"),
            DJANGO_SECRET_KEY=REAL_SECRET,
        ))

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("DJANGO_ENV_FILE", result.stderr.strip().splitlines()[-1], result.stderr)


class TestSettingsTests(SimpleTestCase):
    """main_app.settings_test: the production settings plus test values, from the environment alone."""

    def start_test_settings(self, **variables) -> subprocess.CompletedProcess:
        script = (
            "import os, django; django.setup(); from django.conf import settings; "
            "print('ENV_FILE', settings.ENV_FILE); "
            "print('ACCESS_MINUTES', settings.SIMPLE_JWT['ACCESS_TOKEN_LIFETIME'].total_seconds() / 60); "
            "print('VERIFICATION', settings.IOT_SIGNATURE_VERIFICATION); "
            "print('KEY_IN_ENVIRONMENT', os.environ.get('DJANGO_SECRET_KEY')); "
            "print('KEY_IS_TEST_KEY', settings.SECRET_KEY.startswith('test-only-'))"
        )
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings_test",
            "DATABASE_URL": "sqlite://:memory:",
            **variables,
        }
        result = run_python(script, environment)
        self.assertEqual(result.returncode, 0, result.stderr)
        return dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())

    def test_no_env_file_is_read_even_one_the_environment_names(self):
        tempdir = Path(tempfile.mkdtemp(prefix="settings-test-env-"))
        self.addCleanup(shutil.rmtree, tempdir, ignore_errors=True)
        named = tempdir / "developer.env"
        named.write_text("JWT_ACCESS_TOKEN_MINUTES=42\nIOT_SIGNATURE_VERIFICATION=true\n")

        seen = self.start_test_settings(DJANGO_ENV_FILE=str(named))

        self.assertEqual(seen["ENV_FILE"], "None")
        self.assertEqual(seen["ACCESS_MINUTES"], "60.0")
        self.assertEqual(seen["VERIFICATION"], "False")

    def test_they_start_without_a_secret_key_and_leave_none_in_the_environment(self):
        seen = self.start_test_settings()

        self.assertEqual(seen["KEY_IS_TEST_KEY"], "True")
        self.assertEqual(seen["KEY_IN_ENVIRONMENT"], "None")

    def test_a_secret_key_in_the_environment_is_left_as_it_was_and_not_used(self):
        seen = self.start_test_settings(DJANGO_SECRET_KEY=REAL_SECRET)

        self.assertEqual(seen["KEY_IS_TEST_KEY"], "True")
        self.assertEqual(seen["KEY_IN_ENVIRONMENT"], REAL_SECRET)


class SettingsModuleReport:
    """A test runner for `manage.py test --testrunner`: says which settings it got, runs nothing."""

    def __init__(self, **options):
        pass

    @classmethod
    def add_arguments(cls, parser):
        pass

    def run_tests(self, test_labels, **kwargs):
        print("SETTINGS_MODULE", settings.SETTINGS_MODULE)
        return 0


class ManagePyTestSettingsTests(SimpleTestCase):
    """`manage.py test` gets the test settings unless --settings or DJANGO_SETTINGS_MODULE names others."""

    RUNNER = f"--testrunner={__name__}.SettingsModuleReport"

    def test_the_default_settings_module_follows_the_subcommand(self):
        self.assertEqual(manage.default_settings_module(["manage.py", "test"]), "main_app.settings_test")
        self.assertEqual(manage.default_settings_module(["manage.py", "test", "api.stations"]), "main_app.settings_test")
        for argv in (["manage.py"], ["manage.py", "runserver"], ["manage.py", "migrate"], ["manage.py", "check", "test"]):
            with self.subTest(argv=argv):
                self.assertEqual(manage.default_settings_module(argv), "main_app.settings")

    def manage_py_test(self, *arguments, **variables) -> str:
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_ENV_FILE": "",
            "DATABASE_URL": "sqlite://:memory:",
            "LOG_TO_FILE": "false",
            **variables,
        }
        result = run(["manage.py", "test", self.RUNNER, *arguments], environment)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip().splitlines()[-1]

    def test_manage_py_test_gets_the_test_settings(self):
        self.assertEqual(self.manage_py_test(), "SETTINGS_MODULE main_app.settings_test")

    def test_the_settings_option_wins(self):
        self.assertEqual(
            self.manage_py_test("--settings=main_app.settings", DJANGO_SECRET_KEY=REAL_SECRET),
            "SETTINGS_MODULE main_app.settings",
        )

    def test_the_environment_variable_wins(self):
        self.assertEqual(
            self.manage_py_test(DJANGO_SETTINGS_MODULE="main_app.settings", DJANGO_SECRET_KEY=REAL_SECRET),
            "SETTINGS_MODULE main_app.settings",
        )
