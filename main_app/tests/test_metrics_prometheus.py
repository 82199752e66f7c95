"""
The metrics against a real Prometheus: gunicorn with two workers (started bare, from the project
root, so it finds ./gunicorn.conf.py by itself) on a SQLite file, Prometheus scraping it every
second, a known mix of deliveries, and the totals read back through Prometheus' HTTP API.

One worker is killed with SIGKILL between the two halves of the mix: its counts must stay in the
totals, and the second half is served by other processes, so the totals are sums over workers.

Needs Debian's prometheus package; skips, saying why, without it. REQUIRE_PROMETHEUS=1 (set by
.ci/run once it has installed the package) makes the skip a failure.
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.test import SimpleTestCase
from prometheus_client.mmap_dict import MmapedDict

from api.stations.tests.factories import compact, full_payload, status_payload
from iot_tools.wire import DATA_PATH, signed_headers

ROOT = Path(settings.BASE_DIR)
PROMETHEUS = shutil.which("prometheus")
GUNICORN = Path(sys.executable).parent / "gunicorn"
REQUIRED = os.environ.get("REQUIRE_PROMETHEUS") == "1"
SECRET = "prometheus-test-signing-secret-" + "p" * 24
ARTIFACT = ROOT / "artifacts" / "metrics_after_mix.txt"


def _skip_reason() -> str | None:
    if PROMETHEUS is None:
        return "prometheus is not installed (Debian's prometheus package)"
    if not GUNICORN.exists():
        return f"gunicorn is not installed beside {sys.executable}"
    return None


def free_port(taken=()) -> int:
    """A free port in 18300-18399 (the range kept for this test)."""
    candidates = [port for port in range(18300, 18400) if port not in taken]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18300-18399")


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@unittest.skipIf(_skip_reason() and not REQUIRED, _skip_reason() or "")
class PrometheusScrapeTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if _skip_reason():
            raise AssertionError(f"REQUIRE_PROMETHEUS=1 but {_skip_reason()}")
        cls.dir = Path(tempfile.mkdtemp(prefix="chargeghar-prometheus-"))
        cls.processes = []
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        cls.multiproc = cls.dir / "multiproc"  # left for gunicorn's on_starting hook to create
        cls.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DJANGO_", "IOT_", "DATABASE_", "METRICS_", "LOG_", "PROMETHEUS_"))
            },
            "DJANGO_ENV_FILE": "",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "prometheus-tests-" + "k" * 40,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{cls.dir / 'db.sqlite3'}",
            "IOT_SYSTEM_SIGNATURE_SECRET": SECRET,
            "IOT_SYSTEM_ALLOWED_IPS": "127.0.0.1",
            "METRICS_ALLOWED_IPS": "127.0.0.1",
            "LOG_TO_FILE": "false",
            "LOG_LEVEL": "ERROR",
            "PROMETHEUS_MULTIPROC_DIR": str(cls.multiproc),
        }
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=cls.env, check=True,
                       capture_output=True, timeout=300)
        token_script = (
            "from api.stations.tests.factories import bearer_for, make_staff\n"
            "print(bearer_for(make_staff('iot@prometheus.test')))\n"
        )
        out = subprocess.run([python, "manage.py", "shell", "-c", token_script], cwd=ROOT, env=cls.env,
                             check=True, capture_output=True, text=True, timeout=120).stdout
        cls.authorization = out.strip().splitlines()[-1]

        cls.port = free_port()
        # No --config: from the project root gunicorn reads ./gunicorn.conf.py, whose hooks
        # create the directory and handle a dead worker.
        cls.gunicorn = subprocess.Popen(
            [str(GUNICORN), "main_app.wsgi:application", "--bind", f"127.0.0.1:{cls.port}",
             "--workers", "2", "--worker-class", "gthread", "--threads", "2", "--log-level", "warning"],
            cwd=ROOT, env=cls.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        cls.processes.append(cls.gunicorn)
        wait_for(lambda: http_get(cls.port, "/healthz")[0] == 200, "gunicorn")
        wait_for(lambda: len(cls.workers()) == 2, "two gunicorn workers")

        cls.prometheus_port = free_port(taken={cls.port})
        config = cls.dir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(ROOT / "contrib" / "monitoring" / "rules.yml")],
            "scrape_configs": [{
                "job_name": "chargeghar",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{cls.port}"]}],
            }],
        }))
        cls.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={cls.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{cls.prometheus_port}", "--log.level=warn"],
            cwd=cls.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        cls.processes.append(cls.prometheus)
        wait_for(lambda: http_get(cls.prometheus_port, "/-/ready")[0] == 200, "prometheus")

    @classmethod
    def tearDownClass(cls):
        cls._stop()
        super().tearDownClass()

    @classmethod
    def _stop(cls):
        for process in cls.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def workers(cls) -> list[int]:
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(cls.gunicorn.pid)],
                                  capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in children]

    # --- traffic ---------------------------------------------------------------------------

    def post(self, body: bytes, *, secret: str = SECRET, authorization: str | None = None) -> int:
        headers = signed_headers(
            secret, body, int(time.time()),
            authorization=self.authorization if authorization is None else authorization,
        )
        if not headers.get("Authorization"):
            headers.pop("Authorization", None)
        # A new connection each time, so that both workers accept some.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", DATA_PATH, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def send_all(self, requests) -> list[int]:
        with ThreadPoolExecutor(max_workers=6) as pool:
            return list(pool.map(lambda request: self.post(request[0], **request[1]), requests))

    def counts_by_process(self) -> dict[int, float]:
        """Deliveries counted in each process's file (what the workers wrote, not a scrape)."""
        counts = {}
        for path in self.multiproc.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            counts[pid] = sum(
                value
                for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path))
                if json.loads(key)[1] == "chargeghar_iot_messages_total"
            )
        return counts

    # --- Prometheus --------------------------------------------------------------------------

    def query(self, expression: str) -> dict[tuple, float]:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body = http_get(self.prometheus_port, path)
        answer = json.loads(body)
        self.assertEqual((status, answer["status"]), (200, "success"), answer)
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1]) for item in answer["data"]["result"]
        }

    def scalar(self, expression: str) -> float:
        (value,) = self.query(expression).values()
        return value

    # --- the test --------------------------------------------------------------------------

    def test_prometheus_reads_totals_that_add_up_over_both_workers_and_a_dead_one(self):
        now = int(time.time())
        fulls = [compact(full_payload(f"86460106998{n:04d}", timestamp=now)) for n in range(6)]
        status_serial = "864601069989999"
        newer = compact(status_payload("ONLINE", status_serial, timestamp=now))
        older = compact(status_payload("OFFLINE", status_serial, timestamp=now - 100))
        bad_signature = {"secret": "not-the-secret-" + "x" * 30}
        no_token = {"authorization": ""}

        first_half = [
            *[(body, {}) for body in fulls],
            (newer, {}),
            *[(fulls[n], bad_signature) for n in range(4)],
            *[(compact(full_payload(f"86460106997{n:04d}", timestamp=now)), no_token) for n in range(2)],
        ]
        statuses = self.send_all(first_half)
        self.assertEqual(statuses, [200] * 7 + [403] * 4 + [401] * 2)

        # Kill the worker that counted the most, so that other processes serve the rest.
        served = self.counts_by_process()
        victim = max(served, key=served.get)
        self.assertIn(victim, self.workers())
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in self.workers() and len(self.workers()) == 2, "a new worker")
        wait_for(lambda: http_get(self.port, "/healthz")[0] == 200, "gunicorn after the kill")

        second_half = [(fulls[n], {}) for n in range(3)] + [(older, {})]  # repeats, then a stale status
        self.assertEqual(self.send_all(second_half), [200] * 4)

        served = self.counts_by_process()
        self.assertEqual(sum(served.values()), 13)
        self.assertGreaterEqual(len([pid for pid, count in served.items() if count]), 2, served)

        expected_messages = {
            (("outcome", "processed"), ("type", "full")): 6,
            (("outcome", "processed"), ("type", "status")): 1,
            (("outcome", "duplicate"), ("type", "full")): 3,
            (("outcome", "stale"), ("type", "status")): 1,
            (("outcome", "rejected"), ("type", "full")): 2,
        }

        def messages_arrived():
            return self.scalar("sum(chargeghar_iot_messages_total)") == 13

        wait_for(messages_arrived, "Prometheus to scrape all 13 deliveries", timeout=30)
        by_type_and_outcome = {
            key: value for key, value in self.query("sum by (type, outcome) (chargeghar_iot_messages_total)").items()
            if value
        }
        self.assertEqual(by_type_and_outcome, expected_messages)
        rejections = {
            key: value for key, value in self.query("sum by (code) (chargeghar_iot_rejections_total)").items() if value
        }
        self.assertEqual(rejections, {(("code", "INVALID_SIGNATURE"),): 4, (("code", "NOT_AUTHENTICATED"),): 2})
        self.assertEqual(self.scalar("sum(chargeghar_iot_processing_seconds_count)"), 13)
        self.assertEqual(self.scalar("sum(chargeghar_iot_message_lag_seconds_count)"), 13)
        self.assertEqual(self.scalar("sum(chargeghar_iot_clock_skew_seconds_count)"), 17)
        self.assertEqual(self.scalar('chargeghar_fleet_stations{status="online"}'), 7)
        self.assertEqual(self.scalar("chargeghar_database_up"), 1)
        self.assertEqual(self.scalar('up{job="chargeghar"}'), 1)

        status, rules = http_get(self.prometheus_port, "/api/v1/rules")
        loaded = [rule["name"] for group in json.loads(rules)["data"]["groups"] for rule in group["rules"]]
        self.assertIn("IoTSignatureFailures", loaded)

        status, text = http_get(self.port, "/metrics")
        self.assertEqual(status, 200)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_bytes(text)
