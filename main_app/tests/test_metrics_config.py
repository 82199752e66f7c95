"""
How metrics and logs are configured: the gunicorn hooks of the multiprocess mode, found with
and without --config, and the settings METRICS_* and LOG_FORMAT in a fresh interpreter with
exactly the environment named (as test_settings.py does).
"""

import json
import os
import runpy
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from django.conf import settings
from django.test import SimpleTestCase

from main_app import gunicorn_conf
from main_app.tests.test_settings import IOT_SECRET, REAL_SECRET, run_python

ROOT = Path(settings.BASE_DIR)


class GunicornHookTests(SimpleTestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="chargeghar-multiproc-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def test_on_starting_creates_the_directory_and_drops_an_earlier_runs_values(self):
        target = self.dir / "metrics"
        with mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(target)}):
            gunicorn_conf.on_starting(server=None)
            self.assertTrue(target.is_dir())
            (target / "counter_123.db").write_bytes(b"old")
            (target / "keep.txt").write_text("not ours")
            gunicorn_conf.on_starting(server=None)
        self.assertEqual(sorted(p.name for p in target.iterdir()), ["keep.txt"])

    def test_child_exit_marks_the_worker_dead_as_prometheus_client_documents(self):
        with (
            mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(self.dir)}),
            mock.patch("prometheus_client.multiprocess.mark_process_dead") as mark,
        ):
            gunicorn_conf.child_exit(server=None, worker=SimpleNamespace(pid=4242))
        mark.assert_called_once_with(4242)

    def test_without_the_variable_the_hooks_do_nothing(self):
        environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with (
            mock.patch.dict(os.environ, environment, clear=True),
            mock.patch("prometheus_client.multiprocess.mark_process_dead") as mark,
        ):
            gunicorn_conf.on_starting(server=None)
            gunicorn_conf.child_exit(server=None, worker=SimpleNamespace(pid=1))
        mark.assert_not_called()

    def test_the_root_config_that_a_bare_gunicorn_reads_has_the_hooks(self):
        # gunicorn reads ./gunicorn.conf.py from its working directory when not given --config.
        hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
        self.assertIs(hooks["child_exit"], gunicorn_conf.child_exit)
        self.assertIs(hooks["on_starting"], gunicorn_conf.on_starting)

    def test_every_start_up_names_the_config_module(self):
        for path in ("scripts/run", "Dockerfile", "docs/deploy.md"):
            with self.subTest(path):
                self.assertIn("python:main_app.gunicorn_conf", (ROOT / path).read_text())
        for path in ("scripts/run", "docker/entrypoint.sh", "Dockerfile", "docs/deploy.md"):
            with self.subTest(path):
                self.assertIn("PROMETHEUS_MULTIPROC_DIR", (ROOT / path).read_text())


SETTINGS_SCRIPT = """
import json
import django
django.setup()
from django.conf import settings
import logging
print(json.dumps({
    "allowed": settings.METRICS_ALLOWED_IPS,
    "token": bool(settings.METRICS_BEARER_TOKEN),
    "enabled": settings.METRICS_ENABLED,
    "format": settings.LOG_FORMAT,
    "console": settings.LOGGING["handlers"]["console"]["formatter"],
}))
logging.getLogger("api.stations.ingest.delivery").warning("hello %s", "there", extra={"outcome": "processed"})
"""


class SettingsTests(SimpleTestCase):
    def start(self, **overrides):
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings",
            "DJANGO_ENV_FILE": "",
            "DJANGO_SECRET_KEY": REAL_SECRET,
            "DATABASE_URL": "sqlite://:memory:",
            "IOT_SYSTEM_SIGNATURE_SECRET": IOT_SECRET,
            "LOG_TO_FILE": "false",
            **overrides,
        }
        return run_python(SETTINGS_SCRIPT, environment)

    def test_defaults_loopback_no_token_plain_text(self):
        result = self.start()
        self.assertEqual(result.returncode, 0, result.stderr)
        values = json.loads(result.stdout.splitlines()[0])
        self.assertEqual(values["allowed"], ["127.0.0.0/8", "::1"])
        self.assertEqual(values["token"], False)
        self.assertEqual(values["enabled"], True)
        self.assertEqual((values["format"], values["console"]), ("text", "verbose"))
        self.assertIn("[WARNING]", result.stderr)

    def test_log_format_json_writes_one_object_per_line(self):
        result = self.start(LOG_FORMAT="json")
        self.assertEqual(result.returncode, 0, result.stderr)
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("{")]
        record = json.loads(line)
        self.assertEqual(list(record)[:4], ["time", "level", "logger", "message"])
        self.assertEqual(record["message"], "hello there")
        self.assertEqual(record["outcome"], "processed")

    def test_an_allowlist_and_a_token_are_read(self):
        result = self.start(METRICS_ALLOWED_IPS="10.0.0.0/8, 192.0.2.7", METRICS_BEARER_TOKEN="t" * 32)
        values = json.loads(result.stdout.splitlines()[0])
        self.assertEqual(values["allowed"], ["10.0.0.0/8", "192.0.2.7"])
        self.assertEqual(values["token"], True)

    def test_bad_values_stop_start_up_with_the_variables_name(self):
        for name, value in (("LOG_FORMAT", "xml"), ("METRICS_ALLOWED_IPS", "nowhere"), ("METRICS_ENABLED", "maybe")):
            with self.subTest(name):
                result = self.start(**{name: value})
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(name, result.stderr.strip().splitlines()[-1])


class MemoryBackedFilesTests(SimpleTestCase):
    """Files written on every request live in memory (main_app/gunicorn_conf.py says why)."""

    def test_gunicorn_keeps_its_heartbeat_files_in_dev_shm_with_and_without_config(self):
        for found in (runpy.run_path(str(ROOT / "gunicorn.conf.py")), vars(gunicorn_conf)):
            expected = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self.assertEqual(found["worker_tmp_dir"], expected)

    def test_the_image_and_scripts_run_put_the_metrics_files_in_dev_shm(self):
        dockerfile = (ROOT / "Dockerfile").read_text()
        self.assertIn("PROMETHEUS_MULTIPROC_DIR=/dev/shm/", dockerfile)
        self.assertIn('mktemp -d "$shm/chargeghar-metrics.XXXXXX"', (ROOT / "scripts" / "run").read_text())
