"""
Faults and load, for real: the service under gunicorn on a PostgreSQL server of its own, which the
tests stop, and a gunicorn worker the tests kill with SIGKILL in the middle of a full sync.

They need PostgreSQL's server binaries (Debian's postgresql package) and a `postgres` system
user to run a private server as; they skip, saying why, where those are missing, and CI has
them. Nothing here touches the machine's shared PostgreSQL server.
"""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import psycopg
from django.conf import settings
from django.test import SimpleTestCase

from api.stations.tests.factories import compact, full_payload
from iot_tools.wire import signed_headers

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
SECRET = "fault-test-signing-secret-" + "s" * 30
ROOT = Path(settings.BASE_DIR)


def _skip_reason() -> str | None:
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin/initdb)"
    if os.geteuid() != 0:
        return "starting a private PostgreSQL server needs root (to run it as the postgres user)"
    if shutil.which("runuser") is None:
        return "runuser is not available"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """A throw-away PostgreSQL server in a temporary directory, run as the postgres user."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="chargeghar-faults-"))
        self.data = self.dir / "data"
        self.port = free_port()
        os.chmod(self.dir, 0o777)

    def _as_postgres(self, *args, check=True):
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, args)], capture_output=True, text=True, check=check
        )

    def init(self):
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self):
        self._as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-w", "-t", "30",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start",
        )

    def stop(self, mode="fast"):
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def url(self, database="postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def cleanup(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipIf(_skip_reason(), _skip_reason() or "")
class FaultTests(SimpleTestCase):
    """The sender's retries carry every message through a database outage and a dead worker."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg = PrivatePostgres()
        cls.pg.init()
        cls.pg.start()
        with psycopg.connect(cls.pg.url(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE chargeghar")
        cls.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "IOT_", "DATABASE_"))},
            # The production settings, from this environment alone: no developer's .env.
            "DJANGO_ENV_FILE": "",
            "DATABASE_URL": cls.pg.url("chargeghar"),
            "DATABASE_CONNECT_TIMEOUT": "2",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "fault-tests-" + "k" * 40,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "IOT_SYSTEM_SIGNATURE_SECRET": SECRET,
            "IOT_SYSTEM_ALLOWED_IPS": "127.0.0.1",
            "LOG_TO_FILE": "false",
            "LOG_LEVEL": "ERROR",
        }
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=cls.env, check=True,
                       capture_output=True)
        token_script = (
            "from django.contrib.auth import get_user_model\n"
            "from rest_framework_simplejwt.tokens import RefreshToken\n"
            "u = get_user_model().objects.create_user(username='iot', email='iot@x.test', is_staff=True)\n"
            "from django.contrib.auth.models import Group\n"
            "u.groups.add(Group.objects.get(name='IoT system'))\n"
            "print(RefreshToken.for_user(u).access_token)\n"
        )
        out = subprocess.run([python, "manage.py", "shell", "-c", token_script], cwd=ROOT, env=cls.env,
                             check=True, capture_output=True, text=True).stdout
        cls.token = out.strip().splitlines()[-1]
        cls.port = free_port()
        cls.server = subprocess.Popen(
            [str(Path(python).parent / "gunicorn"), "main_app.wsgi:application", "--bind", f"127.0.0.1:{cls.port}",
             "--workers", "1", "--timeout", "60", "--log-level", "warning"],
            cwd=ROOT, env=cls.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                cls.get("/healthz")
                break
            except OSError:
                time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        os.killpg(cls.server.pid, signal.SIGTERM)
        cls.server.wait(timeout=20)
        cls.pg.cleanup()
        super().tearDownClass()

    @classmethod
    def get(cls, path):
        connection = http.client.HTTPConnection("127.0.0.1", cls.port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()

    def post(self, body: bytes, timeout=30):
        timestamp = int(time.time())
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        connection.request("POST", "/api/internal/stations/data", body=body, headers=signed_headers(
            SECRET, body, timestamp, authorization=f"Bearer {self.token}"
        ))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")

    def send_like_the_sender(self, body: bytes):
        """3 attempts, sleeping 2 s then 4 s, with the identical body and a new signature."""
        answers = []
        for pause in (2, 4, None):
            try:
                answer = self.post(body)
            except OSError as exc:
                answer = (0, {}, str(exc))
            answers.append(answer)
            if answer[0] == 200 or pause is None:
                break
            time.sleep(pause)
        return answers

    def query(self, sql, *params):
        with psycopg.connect(self.pg.url("chargeghar"), autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    def test_database_outage_answers_503_and_the_senders_retries_land_afterwards(self):
        serial = "864601069950001"
        self.assertEqual(self.post(compact(full_payload(serial, banks={1: ("60000001", 50)})))[0], 200)

        self.pg.stop()
        try:
            body = compact(full_payload(serial, banks={1: ("60000001", 55), 2: ("60000002", 90)}))
            status, headers, answer = self.post(body)
            self.assertEqual(status, 503)
            self.assertEqual(answer["error"], "SERVICE_UNAVAILABLE")
            self.assertTrue(int(headers["Retry-After"]) > 0)
            self.assertNotIn("Traceback", json.dumps(answer))
            self.assertEqual(self.get("/readyz")[0], 503)
            self.assertEqual(self.get("/healthz")[0], 200)
        finally:
            self.pg.start()

        answers = self.send_like_the_sender(body)

        self.assertEqual(answers[-1][0], 200, answers)
        self.assertEqual(
            sorted(self.query("SELECT serial_number, battery_level FROM stations_powerbank "
                              "WHERE serial_number LIKE %s", "6000%")),
            [("60000001", 55), ("60000002", 90)],
        )
        digest = hashlib.sha256(body).hexdigest()
        self.assertEqual(
            self.query("SELECT outcome FROM stations_iotevent WHERE body_sha256 = %s AND duplicate_of_id IS NULL",
                       digest),
            [("PROCESSED",)],
        )

    def test_a_worker_killed_in_the_middle_of_a_full_sync_leaves_no_partial_sync(self):
        here, there = "864601069950002", "864601069950003"
        self.assertEqual(self.post(compact(full_payload(there, banks={1: ("61000001", 40)})))[0], 200)
        self.assertEqual(self.post(compact(full_payload(here, banks={3: ("61000003", 70)})))[0], 200)
        before = self.query("SELECT s.slot_number, s.status, s.battery_level FROM stations_stationslot s "
                            "JOIN stations_station st ON st.id = s.station_id WHERE st.serial_number = %s "
                            "ORDER BY s.slot_number", here)
        # The bank moves from `there` to `here`. Freeing its old slot comes after the new slots
        # and the bank have been written in the sync's transaction: hold that old slot's row
        # lock, so the worker stops right there, with a partial sync in its transaction.
        body = compact(full_payload(here, banks={1: ("61000001", 45), 2: ("61000002", 99)}))
        blocker = psycopg.connect(self.pg.url("chargeghar"))
        blocker.execute(
            "SELECT s.id FROM stations_stationslot s JOIN stations_station st ON st.id = s.station_id "
            "WHERE st.serial_number = %s AND s.slot_number = 1 FOR UPDATE", (there,)
        )
        worker = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.server.pid)],
                                    capture_output=True, text=True).stdout.split()[0])
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        timestamp = int(time.time())
        connection.request("POST", "/api/internal/stations/data", body=body, headers=signed_headers(
            SECRET, body, timestamp, authorization=f"Bearer {self.token}"
        ))
        deadline = time.time() + 15
        waiting = []
        while time.time() < deadline and not waiting:
            waiting = self.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            time.sleep(0.05)
        self.assertTrue(waiting, "the worker never reached the blocked statement")

        os.kill(worker, signal.SIGKILL)
        with self.assertRaises((http.client.HTTPException, OSError)):
            connection.getresponse().read()
        blocker.rollback()
        blocker.close()
        time.sleep(1)  # PostgreSQL notices the dead backend's socket and rolls it back

        after = self.query("SELECT s.slot_number, s.status, s.battery_level FROM stations_stationslot s "
                           "JOIN stations_station st ON st.id = s.station_id WHERE st.serial_number = %s "
                           "ORDER BY s.slot_number", here)
        self.assertEqual(after, before, "no slot of the killed sync was written")
        self.assertEqual(
            self.query("SELECT b.serial_number, st.serial_number, s.slot_number FROM stations_powerbank b "
                       "JOIN stations_station st ON st.id = b.current_station_id "
                       "JOIN stations_stationslot s ON s.id = b.current_slot_id WHERE b.serial_number = '61000001'"),
            [("61000001", there, 1)],
        )
        self.assertEqual(self.query("SELECT count(*) FROM stations_powerbank WHERE serial_number = '61000002'"),
                         [(0,)])

        # gunicorn has started a new worker; the sender's retry of the identical body lands.
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        answers = self.send_like_the_sender(body)
        self.assertEqual(answers[-1][0], 200, answers)
        self.assertEqual(
            self.query("SELECT b.serial_number, s.slot_number FROM stations_powerbank b "
                       "JOIN stations_stationslot s ON s.id = b.current_slot_id "
                       "JOIN stations_station st ON st.id = s.station_id WHERE st.serial_number = %s "
                       "ORDER BY s.slot_number", here),
            [("61000001", 1), ("61000002", 2)],
        )

    def test_fifty_concurrent_senders_get_no_server_error_and_leave_the_fleet_consistent(self):
        import random
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from api.stations.tests.factories import return_payload, status_payload

        stations = [f"8646010699600{n:02d}" for n in range(10)]
        deadline = time.time() + 15
        statuses: dict[int, int] = {}
        sent: set[str] = set()
        lock = threading.Lock()

        def sender(number: int):
            rng = random.Random(number)
            while time.time() < deadline:
                serial = rng.choice(stations)
                roll = rng.random()
                if roll < 0.15:
                    body = compact(return_payload(f"7{stations.index(serial):02d}0000{rng.randint(1, 8)}", rng.randint(1, 8), serial))
                elif roll < 0.2:
                    body = compact(status_payload(rng.choice(["ONLINE", "OFFLINE"]), serial))
                else:
                    banks = {n: (f"7{stations.index(serial):02d}0000{n}", rng.randint(5, 100))
                             for n in rng.sample(range(1, 9), 5)}
                    body = compact(full_payload(serial, banks=banks, total_slots=8))
                try:
                    status = self.post(body)[0]
                except OSError:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        sent.add(hashlib.sha256(body).hexdigest())

        with ThreadPoolExecutor(max_workers=50) as pool:
            list(pool.map(sender, range(50)))

        self.assertEqual(set(statuses), {200}, statuses)
        self.assertGreater(statuses[200], 100)
        self.assertEqual(
            self.query("SELECT current_slot_id FROM stations_powerbank WHERE current_slot_id IS NOT NULL "
                       "GROUP BY current_slot_id HAVING count(*) > 1"),
            [], "a slot holds two banks",
        )
        self.assertEqual(
            self.query("SELECT s.id FROM stations_stationslot s WHERE s.status = 'OCCUPIED' AND NOT EXISTS "
                       "(SELECT 1 FROM stations_powerbank b WHERE b.current_slot_id = s.id)"),
            [], "an OCCUPIED slot has no bank",
        )
        self.assertEqual(
            self.query("SELECT b.id FROM stations_powerbank b JOIN stations_stationslot s ON s.id = b.current_slot_id "
                       "WHERE s.station_id <> b.current_station_id"),
            [], "a bank's slot is at another station",
        )
        logged = {digest for (digest,) in self.query(
            "SELECT body_sha256 FROM stations_iotevent WHERE duplicate_of_id IS NULL")}
        self.assertEqual(sent - logged, set(), "every body answered 200 is in the event log")
        self.assertEqual(
            self.query("SELECT body_sha256 FROM stations_iotevent WHERE duplicate_of_id IS NULL "
                       "GROUP BY body_sha256 HAVING count(*) > 1"),
            [], "a body is in the event log more than once as a first delivery",
        )
