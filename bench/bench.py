#!/usr/bin/env python3
"""
Side-by-side benchmark of the station data endpoint: this project against the seed baseline,
the same project with its metrics switched off, and the bare limit for the job.

All run under gunicorn with the same worker settings on the same PostgreSQL server (one
database each), receive the same signed full-sync traffic (real formats, concurrent
keep-alive clients) in rounds taken in turn, and are reported side by side: throughput,
server CPU per full sync (gunicorn plus PostgreSQL, the load generator excluded), latency,
and latency at one fixed offered rate (a multiple of the seed's measured rate):

    .venv/bin/python bench/bench.py --seed-dir S --limit-dir L compare   # all four sides
    .venv/bin/python bench/bench.py scale              # empty database vs 10,000 stations
    .venv/bin/python bench/bench.py eventlog           # empty event log vs 10 million rows, daily upkeep
    .venv/bin/python bench/bench.py soak --minutes 3   # mixed traffic, then invariants
    .venv/bin/python bench/bench.py fixed --rate 170   # ours alone at a fixed rate (--set NAME=VALUE)

`compare` needs the seed baseline, the earlier implementation that is kept outside this
repository: name its checkout with --seed-dir (or BENCH_SEED_DIR). It runs there with its
own virtualenv (created in /tmp/seedenv when missing, as its README describes). The bare
limit (a WSGI app doing only HMAC, JWT and one SQL statement per full sync) is kept outside
too: name its folder with --limit-dir (or BENCH_LIMIT_DIR); without it, compare has three
sides. Requests go only to 127.0.0.1. Everything is bounded by --round-seconds / --minutes.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import http.client
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Appended, not prepended: the seed baseline's process imports this module to count queries,
# and its own `api` and `main_app` must stay the ones it imports.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from iot_tools import wire  # noqa: E402

# Set from --seed-dir: the seed baseline's checkout, outside this repository.
SEED_DIR: Path | None = None
# Set from --limit-dir: the bare limit app (compare's third side), outside this repository too.
LIMIT_DIR: Path | None = None
SEED_VENV = Path(os.environ.get("SEED_VENV", "/tmp/seedenv"))
OUR_PYTHON = Path(sys.executable)
SECRET = "bench-signing-secret-" + "x" * 32
PG_DEFAULT = "postgres://postgres@127.0.0.1:5432"
STATION_BASE = 864601069900000
SLOT_ERROR = ("0x04", "孔位异常：0X04")


# ---------------------------------------------------------------------------- traffic


def station_serial(index: int) -> str:
    return str(STATION_BASE + index)


def bank_serial(station_index: int, slot: int) -> str:
    return str(10_000_000 + station_index * 100 + slot)


def occupied_slots(station_index: int, slots: int, occupancy: float) -> frozenset[int]:
    """Which slots of a station hold a bank: the same for every full sync of that station."""
    return frozenset(random.Random(station_index).sample(range(1, slots + 1), round(slots * occupancy)))


def full_sync(
    station_index: int,
    slots: int,
    occupancy: float,
    rng: random.Random,
    timestamp: int,
    *,
    occupied: frozenset[int] | None = None,
) -> dict:
    """A full sync in the sender's format with fresh readings from `rng` (3% of slots faulty)."""
    if occupied is None:
        occupied = occupied_slots(station_index, slots, occupancy)
    states = []
    for number in range(1, slots + 1):
        if number in occupied:
            battery = rng.randint(20, 100)
            error = SLOT_ERROR if rng.random() < 0.03 else None
            bank = bank_serial(station_index, number)
            states.append(wire.SlotState(number, bank, battery, rng.randint(18, 35), error))
        else:
            states.append(wire.SlotState(number))
    stamp = wire.iso_utc(timestamp)
    return wire.full_message(
        station_serial(station_index),
        states,
        timestamp=timestamp,
        signal_strength=rng.randint(10, 31),
        last_heartbeat=stamp,
        slots_updated_at=stamp,
    )


def full_sync_bodies(stations: int, slots: int, occupancy: float, rng: random.Random):
    """
    Request n: a fresh full sync of station n % stations, as `full_sync` builds it: new
    battery levels, temperatures, error flags and signal strength, and the current time.

    Which slots each station has occupied is drawn here, before any request is timed, and
    the bodies are encoded with orjson: the load generator shares the two cores with the
    servers it measures, so the less CPU it takes per request, the less it holds back the
    faster server (both get the same bytes-for-bytes format either way).
    """
    import orjson  # here: the seed's virtualenv imports this module too, without orjson

    layouts = {index: occupied_slots(index, slots, occupancy) for index in range(stations)}
    lock = threading.Lock()

    def body(n: int) -> bytes:
        index = n % stations
        with lock:  # one draw sequence from `rng`, whichever client thread asks
            message = full_sync(index, slots, occupancy, rng, int(time.time()), occupied=layouts[index])
        return orjson.dumps(message)

    return body


@dataclass
class Target:
    name: str
    port: int
    authorization: str
    process: subprocess.Popen | None = None

    def headers(self, body: bytes) -> dict:
        return wire.signed_headers(SECRET, body, int(time.time()), authorization=self.authorization)


@dataclass
class RoundResult:
    target: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict = field(default_factory=dict)
    # When each answered request was due (at a fixed rate) or sent, in seconds from the start.
    due: list[float] = field(default_factory=list)
    # The start, on time.perf_counter()'s clock.
    began: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    def after(self, seconds: float) -> RoundResult:
        """The requests due from `seconds` on (a fixed-rate run's ramp left out); errors kept."""
        kept = [(due - seconds, latency) for due, latency in zip(self.due, self.latencies, strict=True) if due >= seconds]
        statuses = {status: count for status, count in self.statuses.items() if status != 200}
        statuses[200] = len(kept)
        return RoundResult(
            self.target,
            self.seconds - seconds,
            [latency for _, latency in kept],
            self.errors,
            statuses,
            [due for due, _ in kept],
            self.began + seconds,
        )

    def split(self, spans: list[tuple[float, float]]) -> tuple[RoundResult, RoundResult]:
        """
        The requests in flight during any of `spans` (perf_counter times) and the others, as
        two results of their own (latencies and due times only).
        """
        inside, outside = RoundResult(self.target, 0), RoundResult(self.target, 0)
        for due, latency in zip(self.due, self.latencies, strict=True):
            start = self.began + due
            during = any(start < end and start + latency > begin for begin, end in spans)
            part = inside if during else outside
            part.latencies.append(latency)
            part.due.append(due)
        return inside, outside

    def windows(self, seconds: float) -> list[float]:
        """p99 (ms) of the requests due in each consecutive `seconds` of a fixed-rate run."""
        buckets: dict[int, list[float]] = {}
        for due, latency in zip(self.due, self.latencies, strict=True):
            buckets.setdefault(int(due // seconds), []).append(latency)
        return [percentile(buckets[key], 0.99) for key in sorted(buckets)]


def percentile(latencies: list[float], q: float) -> float:
    """The q-quantile of `latencies` (seconds), in milliseconds."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def drive(
    target: Target, make_body, *, clients: int, seconds: float, rate: float | None = None
) -> RoundResult:
    """
    Load `target` for `seconds` over `clients` keep-alive connections.

    Closed loop (each client sends its next request when the last is answered) unless
    `rate` is given: then requests are due at a fixed total rate, and latency counts from
    when a request was due, so a server that falls behind is charged for the queue too.
    """
    result = RoundResult(target.name, seconds)
    lock = threading.Lock()
    counter = iter(range(10**9))
    clock = {}

    def start_clock():
        clock["begin"] = result.began = time.perf_counter()

    # The schedule starts once every client thread is running, not while the last ones are
    # still being started (their first requests would be counted late).
    ready = threading.Barrier(clients, action=start_clock)

    def client(worker: int):
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
        latencies, statuses, errors, dues = [], {}, 0, []
        sent = 0
        ready.wait()
        begin = clock["begin"]
        deadline = begin + seconds
        while time.perf_counter() < deadline:
            with lock:
                n = next(counter)
            body = make_body(n)
            started = time.perf_counter()
            if rate:
                due = begin + (sent * clients + worker) / rate
                sent += 1
                if due >= deadline:
                    break
                if due > started:
                    time.sleep(due - started)
                started = due
            try:
                connection.request("POST", "/api/internal/stations/data", body=body, headers=target.headers(body))
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
                status = 0
            elapsed = time.perf_counter() - started
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(elapsed)
                dues.append(started - begin)
            else:
                errors += 1
        connection.close()
        with lock:
            result.latencies.extend(latencies)
            result.due.extend(dues)
            result.errors += errors
            for status, count in statuses.items():
                result.statuses[status] = result.statuses.get(status, 0) + count

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    # As timeit does: no cyclic garbage collection in the load generator while it measures
    # (its garbage is freed by reference counting), so a collection pausing every client
    # thread at once is not counted as server latency.
    gc.disable()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.enable()
    return result


# ---------------------------------------------------------------------------- servers


def run(cmd, *, env, cwd, check=True, capture=True) -> str:
    completed = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=capture)
    if check and completed.returncode != 0:
        raise SystemExit(f"command failed: {shlex.join(map(str, cmd))}\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout


def recreate_database(pg: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


_METRICS_DIR: list[str] = []


def metrics_dir() -> str:
    """The multiprocess directory of our gunicorn, as in production (its hooks empty it)."""
    if not _METRICS_DIR:
        _METRICS_DIR.append(new_metrics_dir())
    return _METRICS_DIR[0]


def new_metrics_dir() -> str:
    """A multiprocess directory of its own, for a second server of ours (each master empties its own)."""
    import atexit
    import shutil
    import tempfile

    # Memory-backed, as deployed (main_app/gunicorn_conf.py says why).
    path = tempfile.mkdtemp(prefix="bench-metrics-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    atexit.register(shutil.rmtree, path, True)
    return path


def our_env(pg: str, database: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "IOT_", "DATABASE_"))}
    # METRICS_ENABLED passes through from the environment: METRICS_ENABLED=false measures without.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir())
    env.update(
        DATABASE_URL=f"{pg}/{database}",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="bench-" + "k" * 50,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        IOT_SYSTEM_SIGNATURE_SECRET=SECRET,
        IOT_SYSTEM_ALLOWED_IPS="127.0.0.1",
        LOG_TO_FILE="false",
        LOG_LEVEL="WARNING",
    )
    return env


def seed_env(pg: str, database: str) -> dict:
    from urllib.parse import urlparse

    parsed = urlparse(pg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "IOT_", "DATABASE_", "PG"))}
    env.update(
        PGDATABASE=database, PGHOST=parsed.hostname or "127.0.0.1", PGPORT=str(parsed.port or 5432),
        PGUSER=parsed.username or "postgres", PGPASSWORD=parsed.password or "",
        IOT_SYSTEM_SIGNATURE_SECRET=SECRET,
    )
    return env


def ensure_seed_venv() -> Path:
    python = SEED_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating the seed baseline's virtualenv in {SEED_VENV} (as its README says)")
        subprocess.run([sys.executable, "-m", "venv", str(SEED_VENV)], check=True)
        subprocess.run(
            [str(SEED_VENV / "bin" / "pip"), "install", "-q", "django>=5.2,<6", "djangorestframework",
             "psycopg2-binary", "gunicorn", "pytest-django"],
            check=True,
        )
    return python


OUR_TOKEN_SCRIPT = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework_simplejwt.tokens import RefreshToken
from api.stations.views.internal_views import IOT_SYSTEM_GROUP
User = get_user_model()
user, _ = User.objects.get_or_create(username="bench", defaults={"email": "bench@chargeghar.local", "is_staff": True})
# Station data takes an account with the push permission, as the IoT system's account has.
user.groups.add(Group.objects.get(name=IOT_SYSTEM_GROUP))
print(RefreshToken.for_user(user).access_token)
"""

SEED_TOKEN_SCRIPT = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
User = get_user_model()
user, _ = User.objects.get_or_create(username="bench", defaults={"email": "bench@chargeghar.local", "is_staff": True})
print(Token.objects.get_or_create(user=user)[0].key)
"""


def prepare_ours(pg: str, database: str) -> str:
    recreate_database(pg, database)
    env = our_env(pg, database)
    run([OUR_PYTHON, "manage.py", "migrate", "--noinput"], env=env, cwd=ROOT)
    token = run([OUR_PYTHON, "manage.py", "shell", "-c", OUR_TOKEN_SCRIPT], env=env, cwd=ROOT).strip().splitlines()[-1]
    return f"Bearer {token}"


def prepare_seed(pg: str, database: str) -> str:
    python = ensure_seed_venv()
    recreate_database(pg, database)
    env = seed_env(pg, database)
    run([python, "manage.py", "migrate", "--noinput"], env=env, cwd=SEED_DIR)
    token = run([python, "manage.py", "shell", "-c", SEED_TOKEN_SCRIPT], env=env, cwd=SEED_DIR).strip().splitlines()[-1]
    return f"Token {token}"


def gunicorn_command(python: Path, port: int, workers: int, threads: int) -> list[str]:
    return [
        str(python.parent / "gunicorn"), "main_app.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "10",
        "--log-level", "warning", "--timeout", "60",
        # Every side's worker heartbeat files in memory, as gunicorn's documentation advises.
        *(["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []),
    ]


def start(target: Target, cmd: list[str], *, env: dict, cwd: Path) -> None:
    target.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=2)
            connection.request("GET", "/")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{target.name} did not start on port {target.port}")


def stop(target: Target) -> None:
    if target.process and target.process.poll() is None:
        os.killpg(target.process.pid, signal.SIGTERM)
        try:
            target.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(target.process.pid, signal.SIGKILL)


def worker_peak_memory_mib(target: Target) -> float:
    """Highest VmHWM (peak resident set) among the gunicorn workers of `target`."""
    if not target.process:
        return float("nan")
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(target.process.pid)], capture_output=True, text=True)
    peaks = []
    for pid in children.stdout.split():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks) if peaks else float("nan")


# ---------------------------------------------------------------------------- query counts

QUERY_COUNT_SCRIPT = r"""
import json, os, sys, time, random
sys.path.insert(0, os.getcwd())
import django
django.setup()
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
sys.path.insert(0, sys.argv[1])
from bench import SECRET, full_sync, wire
auth = sys.argv[2]
client = Client()
counts = {}
for slots in (4, 24, 48):
    index = 90000 + slots
    rng = random.Random(slots)
    ts = int(time.time()) - 10
    for attempt in range(2):  # the first creates the station; count the second (the steady state)
        body = wire.compact_json(full_sync(index, slots, 0.7, rng, ts + attempt))
        now = int(time.time())
        headers = {"HTTP_AUTHORIZATION": auth, "HTTP_X_TIMESTAMP": str(now), "HTTP_X_SIGNATURE": wire.sign(SECRET, body, now),
                   "HTTP_HOST": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1"}
        with CaptureQueriesContext(connection) as queries:
            response = client.generic("POST", "/api/internal/stations/data", body, content_type="application/json", **headers)
        assert response.status_code == 200, response.content
    counts[slots] = len(queries.captured_queries)
print(json.dumps(counts))
"""


def count_queries(python: Path, cwd: Path, env: dict, authorization: str) -> dict:
    env = dict(env, DJANGO_SETTINGS_MODULE="main_app.settings")
    out = run([python, "-c", QUERY_COUNT_SCRIPT, str(ROOT / "bench"), authorization], env=env, cwd=cwd)
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


# ---------------------------------------------------------------------------- commands


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = run(["psql", "--version"], env=os.environ, cwd=ROOT, check=False).strip()
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.platform()}, Python {platform.python_version()}, {pg}"


def warm_up(target: Target, stations: int, slots: int, occupancy: float) -> None:
    """
    Three full syncs per station, untimed: the timed rounds then update existing stations,
    and every worker has its database connection and its warm caches, on both sides.
    """
    drive_fixed(target, full_sync_bodies(stations, slots, occupancy, random.Random(1)), count=3 * stations, clients=8)


def analyze(pg: str, database: str) -> None:
    """
    Refresh the planner's statistics once the warm-up has filled the tables. A production
    database has them (autovacuum keeps them current); this one was filled seconds ago, and
    a plan chosen for a nearly empty table would be measured instead of steady state.
    Done for both sides alike.
    """
    import psycopg

    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        connection.execute("ANALYZE")


class Autovacuum:
    """
    Stands in for PostgreSQL's autovacuum where the server has it turned off (this machine's
    server runs with the CI configuration, `autovacuum = off`). Without it every update leaves
    a dead row version behind for good: after a few minutes of full syncs the 200-row station
    table holds tens of thousands of them, every lookup wades through them, and the run
    measures a database no production server would have.

    It decides as autovacuum decides, with the server's own autovacuum settings: every
    `autovacuum_naptime` (60 s by default) of a database's traffic it looks at each table's
    statistics and VACUUMs the tables with more dead rows than `autovacuum_vacuum_threshold +
    autovacuum_vacuum_scale_factor x rows` or more rows inserted since their last VACUUM than
    the insert threshold and scale factor allow, and ANALYZEs those with more changed rows
    than the analyze threshold and scale factor allow (a table's own storage parameters
    override the server's, as they do for autovacuum; partitioned tables are left to their
    partitions). A table's TOAST table (where the bodies of the event log go) is looked at on
    its own, as autovacuum has done since PostgreSQL 8.4: VACUUMed by its own counts, with its
    own `toast.` storage parameters or else its table's, never analyzed, and left out of its
    table's VACUUM (`PROCESS_TOAST FALSE`). It is paced by `autovacuum_vacuum_cost_delay` and
    `_cost_limit`, and works while traffic runs, as autovacuum does. `every` instead VACUUMs the whole database after
    every `every` seconds of its traffic (`--vacuum-every`, the earlier passes' schedule).

    Where the sides take turns (`compare`, `per_side`), each side's database is looked at only
    while that side is measured (`serving`), after `autovacuum_naptime` (or `every`) seconds
    of its own traffic (time between windows counts for no one), over a connection opened
    beforehand: the VACUUM runs during the side's own window, takes CPU from that side only,
    and its backend's CPU is counted as that side's PostgreSQL, as an autovacuum worker of
    its database would be. A window ends only once a visit running in it has finished.
    Elsewhere (one server, or servers measured alike) every database's traffic time counts
    and all are looked at in turn. Does nothing where the server runs autovacuum itself.
    """

    SETTINGS = (
        "autovacuum_naptime", "autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_insert_threshold", "autovacuum_vacuum_insert_scale_factor",
        "autovacuum_analyze_threshold", "autovacuum_analyze_scale_factor",
        "autovacuum_vacuum_cost_delay", "autovacuum_vacuum_cost_limit", "vacuum_cost_limit",
    )
    # Each table's statistics and its own autovacuum storage parameters, then each of their
    # TOAST tables' (with the table's parameters where it has none of its own). Leaf tables
    # only: autovacuum never processes a partitioned table itself.
    TABLES_SQL = """
        SELECT c.oid::regclass::text, false, s.n_dead_tup, s.n_ins_since_vacuum, s.n_mod_since_analyze,
               greatest(c.reltuples, 0), coalesce(c.reloptions, '{}')
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE c.relkind IN ('r', 'm')
        UNION ALL
        SELECT t.oid::regclass::text, true, s.n_dead_tup, s.n_ins_since_vacuum, 0,
               greatest(t.reltuples, 0), coalesce(t.reloptions, c.reloptions, '{}')
        FROM pg_stat_user_tables u JOIN pg_class c ON c.oid = u.relid
             JOIN pg_class t ON t.oid = c.reltoastrelid JOIN pg_stat_all_tables s ON s.relid = t.oid
        WHERE c.relkind IN ('r', 'm')
        ORDER BY 2, 1
    """

    def __init__(self, pg: str, databases: list[str], every: float | None = None, per_side: bool = False):
        import psycopg

        self.pg, self.databases, self.per_side = pg, databases, per_side
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as connection:
            self.needed = connection.execute("SHOW autovacuum").fetchone()[0] != "on"
            self.settings = dict(connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(self.SETTINGS)]
            ).fetchall())
        self.every = every
        self.interval = every if every else float(self.settings["autovacuum_naptime"])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.active: str | None = None
        self.traffic = dict.fromkeys(databases, 0.0)  # seconds of traffic since its last visit
        self.vacuuming = threading.Lock()
        self.connections: dict = {}
        # Every VACUUM or ANALYZE: its database, start and end (time.perf_counter()), the statement.
        self.runs: list[tuple[str, float, float, str]] = []

    def describe(self) -> str:
        if not self.needed:
            return "autovacuum: the server's own"
        if self.every:
            return (f"autovacuum: off on this server; the script runs VACUUM on each database after every "
                    f"{self.every:.0f} s of its traffic")
        return (f"autovacuum: off on this server; the script does its work by its rules and this server's "
                f"settings: after every {self.interval:.0f} s of a database's traffic, VACUUM and ANALYZE of "
                f"the tables past their thresholds")

    @contextmanager
    def serving(self, database: str):
        """While `database`'s side is measured: its traffic time counts, and only it is vacuumed."""
        self.active = database
        try:
            yield
        finally:
            self.active = None
            with self.vacuuming:  # a visit started in this window ends in it
                pass

    def run(self) -> None:
        tick, last = 0.25, time.monotonic()
        while not self.stop.wait(tick):
            now = time.monotonic()
            if self.per_side:
                busy = [self.active] if self.active else []
            else:
                busy = self.databases
            for database in busy:
                self.traffic[database] += now - last
            last = now
            for database in busy:
                if self.traffic[database] >= self.interval:
                    self.traffic[database] = 0.0
                    with self.vacuuming:
                        self.visit(database)

    def visit(self, database: str) -> None:
        connection = self.connections[database]
        if self.every:
            self._timed(database, "VACUUM")
            return
        for table, toast, dead, inserted, modified, rows, options in connection.execute(self.TABLES_SQL).fetchall():
            vacuum = dead > self._threshold(options, "vacuum", rows) or (
                inserted > self._threshold(options, "vacuum_insert", rows)
            )
            if toast:  # on its own, never analyzed, as autovacuum does
                if vacuum:
                    self._timed(database, f"VACUUM {table}")
                continue
            analyze = modified > self._threshold(options, "analyze", rows)
            if vacuum:  # its TOAST table has a row of its own in this list
                self._timed(database, f"VACUUM (PROCESS_TOAST FALSE{', ANALYZE' if analyze else ''}) {table}")
            elif analyze:
                self._timed(database, f"ANALYZE {table}")

    def _threshold(self, options: list[str], kind: str, rows: float) -> float:
        own = dict(option.split("=", 1) for option in options)

        def setting(name: str) -> float:
            return float(own.get(name, self.settings[name]))

        return setting(f"autovacuum_{kind}_threshold") + setting(f"autovacuum_{kind}_scale_factor") * rows

    def _timed(self, database: str, statement: str) -> None:
        started = time.perf_counter()
        self.connections[database].execute(statement)
        self.runs.append((database, started, time.perf_counter(), statement))

    def work(self, database: str, begin: float, end: float) -> str:
        """What ran on `database` between `begin` and `end` (perf_counter times), and for how long."""
        done = [(what, finish - start) for name, start, finish, what in self.runs
                if name == database and start < end and finish > begin]
        return ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in done)

    def spans(self, database: str) -> list[tuple[float, float]]:
        """When `database` was being vacuumed or analyzed."""
        return [(start, end) for name, start, end, _ in self.runs if name == database]

    def __enter__(self):
        if self.needed:
            import psycopg

            delay = self.settings["autovacuum_vacuum_cost_delay"]
            limit = self.settings["autovacuum_vacuum_cost_limit"]
            if limit == "-1":
                limit = self.settings["vacuum_cost_limit"]
            for database in self.databases:
                connection = psycopg.connect(f"{self.pg}/{database}", autocommit=True)
                # Paced as autovacuum paces itself, rather than as fast as a manual VACUUM goes.
                connection.execute(f"SET vacuum_cost_delay = {float(delay)}")
                connection.execute(f"SET vacuum_cost_limit = {int(limit)}")
                self.connections[database] = connection
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        for connection in self.connections.values():
            connection.close()


def drive_fixed(target: Target, make_body, *, count: int, clients: int) -> None:
    counter = iter(range(count))
    lock = threading.Lock()
    failures = []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            body = make_body(n)
            connection.request("POST", "/api/internal/stations/data", body=body, headers=target.headers(body))
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                failures.append((response.status, payload[:300]))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{target.name}: warm-up failed: {failures[:3]}")


def print_round(result: RoundResult, cpu: ServerCpu | None = None) -> None:
    spent = f"   CPU {cpu.per_request_ms(len(result.latencies)):5.2f} ms/sync" if cpu else ""
    print(
        f"  {result.target:<11} {result.rate:8.1f} full syncs/s   p50 {result.pct(0.50):7.1f} ms   "
        f"p99 {result.pct(0.99):7.1f} ms   max {result.pct(1.0):7.1f} ms{spent}   errors {result.errors}   "
        f"statuses {dict(sorted(result.statuses.items()))}",
        flush=True,
    )


# ---------------------------------------------------------------------------- server CPU

TICKS = os.sysconf("SC_CLK_TCK")
# PostgreSQL's own processes, which work for whichever side is running (WAL, checkpoints).
PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher")


def process_ticks() -> dict[int, tuple[str, int, int]]:
    """pid -> (command line, process group, CPU ticks used so far: user + system, all threads)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (command, int(fields[2]), int(fields[11]) + int(fields[12]))
    return found


@dataclass
class ServerCpu:
    """
    CPU a side's server used over a stretch of time: its gunicorn (master and workers: the
    process group it was started in) and the PostgreSQL backends connected to its database,
    plus PostgreSQL's background processes (WAL writer, checkpointer), which work for
    whichever side is running: the sides take turns, so those are this side's too. The load
    generator is not counted. As bench/cpu_split.py measures it, from /proc. Connections that
    open and close inside the stretch are missed; every side keeps its connections open.
    """

    workers: int = 0
    database: int = 0

    @classmethod
    def between(cls, target: Target, database: str, before: dict, after: dict) -> ServerCpu:
        spent = cls()
        for pid, (command, group, ticks) in after.items():
            used = ticks - before.get(pid, (command, group, 0))[2]
            if used <= 0:
                continue
            if target.process and group == target.process.pid:
                spent.workers += used
            elif command.startswith("postgres: ") and (
                f" {database} " in command or command.split(": ")[-1].strip() in PG_BACKGROUND
            ):
                spent.database += used
        return spent

    def per_request_ms(self, requests: int, part: str = "total") -> float:
        ticks = {"workers": self.workers, "database": self.database, "total": self.workers + self.database}[part]
        return ticks / TICKS * 1000 / requests if requests else float("nan")

    def __add__(self, other: ServerCpu) -> ServerCpu:
        return ServerCpu(self.workers + other.workers, self.database + other.database)


def measured(target: Target, database: str, load, autovacuum: Autovacuum | None = None) -> tuple[RoundResult, ServerCpu]:
    """
    Run `load()` (which drives `target`) and the server CPU it cost. With `autovacuum`
    (sides taking turns), only this side's database is vacuumed meanwhile.
    """
    before = process_ticks()
    if autovacuum is None:
        result = load()
    else:
        with autovacuum.serving(database):
            result = load()
    after = process_ticks()
    return result, ServerCpu.between(target, database, before, after)


@dataclass
class Side:
    """One of the servers compared: its target, database, and how it is started."""

    target: Target
    database: str
    command: list[str]
    env: dict
    cwd: Path
    rounds: list[RoundResult] = field(default_factory=list)
    cpu: ServerCpu = field(default_factory=ServerCpu)
    fixed: RoundResult | None = None
    fixed_cpu_ms: float = float("nan")

    @property
    def name(self) -> str:
        return self.target.name

    def total(self) -> RoundResult:
        return RoundResult(
            self.name,
            sum(r.seconds for r in self.rounds),
            [x for r in self.rounds for x in r.latencies],
            sum(r.errors for r in self.rounds),
        )


def drive_pairs(on: Side, off: Side, args, autovacuum: Autovacuum) -> list[tuple[float, float]]:
    """
    Ours with metrics on and off in many short rounds, one right after the other, each pair
    in turn order: (on/off capacity, on/off gunicorn CPU per full sync) of every pair. A pair
    spans seconds, over which this machine's speed moves far less than over the minutes
    between the long rounds above, so the median of the pairs' ratios shows a difference of a
    few percent that the long rounds' totals cannot (their spread, shown next to it, says how
    far to trust it). Metrics run no query, so the gunicorn CPU is what they could cost.
    """
    print(f"pairs: {on.name} and {off.name}, {args.pairs} pairs of {args.pair_seconds:g}-s rounds, "
          f"{args.clients} clients, order alternating")
    ratios = []
    for number in range(args.pairs):
        measured_pair = {}
        for side in (on, off) if number % 2 == 0 else (off, on):
            body = full_sync_bodies(args.stations, args.slots, args.occupancy, random.Random(1000 + number))
            result, cpu = measured(
                side.target, side.database,
                lambda: drive(side.target, body, clients=args.clients, seconds=args.pair_seconds),  # noqa: B023
                autovacuum,
            )
            measured_pair[side.name] = (result.rate, cpu.per_request_ms(len(result.latencies), "workers"))
        (on_rate, on_ms), (off_rate, off_ms) = measured_pair[on.name], measured_pair[off.name]
        ratios.append((on_rate / off_rate, on_ms / off_ms))
    return ratios


def quartiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return tuple(ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.25, 0.5, 0.75))


def prepare_limit(pg: str, database: str, limit_dir: Path) -> tuple[dict[str, str], str]:
    """
    The bare limit's tables on a fresh database, made by its own `limit_app.py` (run from its
    folder with our interpreter: it needs psycopg and PyJWT): the environment it reads and a
    bearer token for it.
    """
    recreate_database(pg, database)
    dsn = f"{pg}/{database}"
    run([OUR_PYTHON, "limit_app.py", "--init", dsn], env=os.environ, cwd=limit_dir)
    key = "bench-limit-jwt-" + "k" * 32
    token = run([OUR_PYTHON, "limit_app.py", "--token", key], env=os.environ, cwd=limit_dir).strip().splitlines()[-1]
    return {"LIMIT_DSN": dsn, "LIMIT_SECRET": SECRET, "LIMIT_JWT_KEY": key}, token


def limit_side(args, port: int) -> Side:
    """The bare limit, run from its own folder with our interpreter (it needs psycopg, PyJWT, gunicorn)."""
    database = "bench_limit"
    limit_env, token = prepare_limit(args.pg, database, LIMIT_DIR)
    env = dict(os.environ, **limit_env)
    command = gunicorn_command(OUR_PYTHON, port, args.workers, args.threads)
    command[1] = "limit_app:app"
    return Side(Target("limit", port, f"Bearer {token}"), database, command, env, LIMIT_DIR)


def compare(args) -> None:
    print(f"machine: {machine()}")
    print(f"command: {shlex.join(sys.argv)}")
    print(
        f"traffic: {args.stations} stations x {args.slots} slots, {int(args.occupancy * 100)}% occupied, "
        f"{args.clients} keep-alive clients; gunicorn gthread {args.workers} workers x {args.threads} thread(s) each"
    )
    seed_python = ensure_seed_venv()
    sides = [
        Side(Target("seed", args.port + 1, prepare_seed(args.pg, "bench_seed")), "bench_seed",
             gunicorn_command(seed_python, args.port + 1, args.workers, args.threads),
             seed_env(args.pg, "bench_seed"), SEED_DIR),
        Side(Target("ours", args.port + 2, prepare_ours(args.pg, "bench_ours")), "bench_ours",
             gunicorn_command(OUR_PYTHON, args.port + 2, args.workers, args.threads),
             dict(our_env(args.pg, "bench_ours"), METRICS_ENABLED="true"), ROOT),
    ]
    if not args.no_metrics_off:
        # The same code on a database of its own, with its metrics switched off (issue: cheap).
        sides.append(
            Side(Target("metrics-off", args.port + 3, prepare_ours(args.pg, "bench_ours_off")), "bench_ours_off",
                 gunicorn_command(OUR_PYTHON, args.port + 3, args.workers, args.threads),
                 dict(our_env(args.pg, "bench_ours_off"), METRICS_ENABLED="false",
                      PROMETHEUS_MULTIPROC_DIR=new_metrics_dir()), ROOT)
        )
    if LIMIT_DIR is not None:
        sides.append(limit_side(args, args.port + 4))
    print("sides: " + ", ".join(side.name for side in sides)
          + f"; ours with metrics on, multiprocess directory {sides[1].env['PROMETHEUS_MULTIPROC_DIR']}")
    queries = {
        "seed": count_queries(seed_python, SEED_DIR, sides[0].env, sides[0].target.authorization),
        "ours": count_queries(OUR_PYTHON, ROOT, sides[1].env, sides[1].target.authorization),
    }
    by_name = {side.name: side for side in sides}
    try:
        for side in sides:
            start(side.target, side.command, env=side.env, cwd=side.cwd)
        for side in sides:
            warm_up(side.target, args.stations, args.slots, args.occupancy)
            analyze(args.pg, side.database)
        autovacuum = Autovacuum(args.pg, [side.database for side in sides], every=args.vacuum_every, per_side=True)
        print(autovacuum.describe())
        print("CPU: server CPU per full sync, gunicorn (master and workers) plus PostgreSQL (the side's backends, "
              "its VACUUM included, and the server's background processes), from /proc; the load generator "
              "excluded")
        with autovacuum:
            for round_number in range(1, args.rounds + 1):
                # Each round starts with the next side, so no side always follows the same one.
                shift = (round_number - 1) % len(sides)
                order = sides[shift:] + sides[:shift]
                print(f"round {round_number} ({args.round_seconds:.0f} s each, {order[0].name} first)")
                for side in order:
                    body = full_sync_bodies(args.stations, args.slots, args.occupancy, random.Random(round_number))
                    result, cpu = measured(
                        side.target, side.database,
                        lambda: drive(side.target, body, clients=args.clients, seconds=args.round_seconds),  # noqa: B023
                        autovacuum,
                    )
                    side.rounds.append(result)
                    side.cpu = side.cpu + cpu
                    print_round(result, cpu)
            pairs = None
            if "metrics-off" in by_name:
                pairs = drive_pairs(by_name["ours"], by_name["metrics-off"], args, autovacuum)
            seed_rate = by_name["seed"].total().rate
            target_rate = args.target_multiple * seed_rate
            fixed_sides = [side for side in sides if side.name in ("ours", "limit")]
            print(f"fixed rate: {' and '.join(s.name for s in fixed_sides)} at {args.target_multiple:g} x the seed's "
                  f"{seed_rate:.1f}/s = {target_rate:.1f}/s for {args.fixed_seconds:.0f} s each, after a "
                  f"{args.ramp_seconds:g}-s ramp at the same rate, not counted (latency counted from when each "
                  f"request was due)")
            for side in fixed_sides:
                body = full_sync_bodies(args.stations, args.slots, args.occupancy, random.Random(99))
                # A short ramp at the same rate first, not counted: the server has just been idle
                # for the other sides' rounds and every client connection is new.
                ramp = args.ramp_seconds
                result, cpu = measured(
                    side.target, side.database,
                    lambda: drive(side.target, body, clients=args.clients, seconds=ramp + args.fixed_seconds,  # noqa: B023
                                  rate=target_rate),
                    autovacuum,
                )
                side.fixed, side.fixed_cpu_ms = result.after(ramp), cpu.per_request_ms(len(result.latencies))
                print_round(side.fixed)
                window = args.round_seconds
                print(f"  {side.name} p99 of each {window:.0f} s (ms): "
                      + "  ".join(f"{p99:.1f}" for p99 in side.fixed.windows(window)))
                # What the tail is made of: the requests in flight while the side's own
                # database was being vacuumed, against the others.
                spans = autovacuum.spans(side.database)
                during, rest = side.fixed.split(spans)
                covered = sum(min(end, side.fixed.began + side.fixed.seconds) - max(start, side.fixed.began)
                              for start, end in spans if end > side.fixed.began)
                print(f"  {side.name} while its VACUUM or ANALYZE ran ({len(spans)} runs, {covered:.1f} s of "
                      f"{side.fixed.seconds:.0f}): {len(during.latencies)} requests, p50 {during.pct(0.5):.1f} ms, "
                      f"p99 {during.pct(0.99):.1f} ms; the other {len(rest.latencies)}: p50 {rest.pct(0.5):.1f} ms, "
                      f"p99 {rest.pct(0.99):.1f} ms, max {rest.pct(1.0):.1f} ms")
                work = autovacuum.work(side.database, side.fixed.began, side.fixed.began + side.fixed.seconds)
                print(f"  {side.name} vacuum work in the phase: {work or 'none'}")
        memory = {side.name: worker_peak_memory_mib(side.target) for side in sides}
    finally:
        for side in sides:
            stop(side.target)

    names = [side.name for side in sides]
    totals = {side.name: side.total() for side in sides}
    seed_total, ours_total = totals["seed"], totals["ours"]
    print()
    print("summary (all rounds)     " + "".join(f"{name:>12}" for name in names) + "   ours/seed")
    print("  full syncs/s           " + "".join(f"{totals[n].rate:12.1f}" for n in names)
          + f"  {ours_total.rate / seed_total.rate:9.2f}x")
    print("  p50 latency (ms)       " + "".join(f"{totals[n].pct(0.5):12.1f}" for n in names))
    print("  p99 latency (ms)       " + "".join(f"{totals[n].pct(0.99):12.1f}" for n in names))
    print("  errors                 " + "".join(f"{totals[n].errors:12d}" for n in names))
    for part, label in (("workers", "CPU ms/sync, gunicorn "), ("database", "CPU ms/sync, PostgreSQL"),
                        ("total", "CPU ms/sync, server   ")):
        print(f"  {label} " + "".join(
            f"{by_name[n].cpu.per_request_ms(len(totals[n].latencies), part):12.2f}" for n in names))
    print("  peak worker RSS (MiB)  " + "".join(f"{memory[n]:12.1f}" for n in names))
    for slots in (4, 24, 48):
        print(f"  queries/full sync {slots:>2} slots {queries['seed'][slots]:7d}  {queries['ours'][slots]:10d}  (seed, ours)")
    ours_cpu = by_name["ours"].cpu.per_request_ms(len(ours_total.latencies))
    if "metrics-off" in by_name:
        off_total = totals["metrics-off"]
        off_cpu = by_name["metrics-off"].cpu.per_request_ms(len(off_total.latencies))
        print(f"  metrics on against off: capacity {100 * (ours_total.rate / off_total.rate - 1):+.1f}%, "
              f"server CPU per full sync {100 * (ours_cpu / off_cpu - 1):+.1f}%")
    if pairs:
        low, median, high = quartiles([capacity for capacity, _ in pairs])
        cpu_low, cpu_median, cpu_high = quartiles([cpu for _, cpu in pairs])
        print(f"  metrics on against off, {len(pairs)} pairs of {args.pair_seconds:g}-s rounds: capacity median "
              f"{100 * (median - 1):+.1f}% (quartiles {100 * (low - 1):+.1f}% to {100 * (high - 1):+.1f}%), gunicorn CPU "
              f"per full sync median {100 * (cpu_median - 1):+.1f}% (quartiles {100 * (cpu_low - 1):+.1f}% to "
              f"{100 * (cpu_high - 1):+.1f}%)")
    if "limit" in by_name:
        limit_cpu = by_name["limit"].cpu.per_request_ms(len(totals["limit"].latencies))
        print(f"  ours against the limit: server CPU per full sync {ours_cpu / limit_cpu:.2f}x "
              f"({ours_cpu:.2f} ms against {limit_cpu:.2f} ms), capacity {ours_total.rate / totals['limit'].rate:.2f}x")
    for side in sides:
        if side.fixed is not None:
            fixed = side.fixed
            print(f"  at {target_rate:.1f}/s offered ({args.target_multiple:g}x seed): {side.name} served {fixed.rate:.1f}/s, "
                  f"p50 {fixed.pct(0.5):.1f} ms, p99 {fixed.pct(0.99):.1f} ms, max {fixed.pct(1.0):.1f} ms, "
                  f"errors {fixed.errors}, CPU {side.fixed_cpu_ms:.2f} ms/sync (ramp included)")


def event_log(args) -> None:
    """The event log at scale: bench/event_log_scale.py, with this script's common options."""
    import event_log_scale

    event_log_scale.run(args)


def fixed(args) -> None:
    """
    Ours alone at a fixed rate, for trying one setting against another: p50 and p99 over the
    run, per 15 s and per second. `--set NAME=VALUE` passes a setting to the server's
    environment (e.g. DATABASE_CONN_MAX_AGE=60); `--threads` and `--ramp-seconds` apply.
    """
    print(f"machine: {machine()}")
    print(f"command: {shlex.join(sys.argv)}")
    database = "bench_fixed"
    target = Target("ours", args.port + 5, prepare_ours(args.pg, database))
    env = our_env(args.pg, database)
    env.update(item.split("=", 1) for item in args.set)
    start(target, gunicorn_command(OUR_PYTHON, target.port, args.workers, args.threads), env=env, cwd=ROOT)
    try:
        warm_up(target, args.stations, args.slots, args.occupancy)
        analyze(args.pg, database)
        autovacuum = Autovacuum(args.pg, [database], every=args.vacuum_every)
        print(autovacuum.describe())
        body = full_sync_bodies(args.stations, args.slots, args.occupancy, random.Random(99))
        with autovacuum:
            result = drive(
                target, body, clients=args.clients, seconds=args.ramp_seconds + args.seconds, rate=args.rate
            )
    finally:
        stop(target)
    result = result.after(args.ramp_seconds)
    work = autovacuum.work(database, result.began, result.began + result.seconds)
    print(f"{args.rate:g}/s for {args.seconds:g} s after a {args.ramp_seconds:g}-s ramp, not counted; "
          f"gunicorn gthread {args.workers} workers x {args.threads} thread(s); set: {' '.join(args.set) or '-'}")
    print_round(result)
    print("  p99 of each 15 s (ms): " + "  ".join(f"{p99:.1f}" for p99 in result.windows(15)))
    print("  p99 of each second (ms): " + " ".join(f"{p99:.0f}" for p99 in result.windows(1)))
    print(f"  vacuum work: {work or 'none'}")


BIG_FLEET_SQL = """
INSERT INTO stations_station (id, serial_number, imei, station_name, address, latitude, longitude, total_slots,
    status, hardware_info, firmware_version, signal_strength, wifi_ssid, last_heartbeat, device_state_at,
    status_changed_at, created_at, updated_at)
SELECT md5('st' || i)::uuid, (700000000000000 + i)::text, (700000000000000 + i)::text, 'Station ' || i, 'Pending',
    0, 0, 20, 'ONLINE', '{"firmware_version": "2.1.5"}', '2.1.5', '31', '', now(), now() - interval '1 hour',
    now(), now(), now()
FROM generate_series(1, %(stations)s) AS i;
INSERT INTO stations_stationslot (station_id, slot_number, status, battery_level, slot_metadata, updated_at)
SELECT md5('st' || i)::uuid, s, 'OCCUPIED', 80, '{}', now()
FROM generate_series(1, %(stations)s) AS i, generate_series(1, 20) AS s;
INSERT INTO stations_powerbank (serial_number, model, status, battery_level, hardware_info, current_station_id,
    current_slot_id, created_at, updated_at)
SELECT (500000000 + slot.id)::text, '', 'AVAILABLE', 80, '{}', slot.station_id, slot.id, now(), now()
FROM stations_stationslot slot;
ANALYZE;
"""


def empty_against_big(targets: list[tuple[Target, str]], args) -> tuple[RoundResult, RoundResult]:
    """
    One full sync at a time on two servers of ours, "empty" and "big" (each on its database),
    in rounds that alternate which goes first, vacuuming as autovacuum would: all rounds'
    latencies of each.
    """
    results: dict[str, list[RoundResult]] = {target.name: [] for target, _ in targets}
    try:
        for target, database in targets:
            start(target, gunicorn_command(OUR_PYTHON, target.port, args.workers, args.threads),
                  env=our_env(args.pg, database), cwd=ROOT)
            warm_up(target, args.stations, args.slots, args.occupancy)
            analyze(args.pg, database)
        autovacuum = Autovacuum(args.pg, [database for _, database in targets], every=args.vacuum_every)
        print(autovacuum.describe())
        with autovacuum:
            for round_number in range(1, args.rounds + 1):
                order = targets if round_number % 2 else targets[::-1]
                print(f"round {round_number} (one client, {args.round_seconds:.0f} s each, {order[0][0].name} first)")
                for target, _ in order:
                    body = full_sync_bodies(args.stations, args.slots, args.occupancy, random.Random(round_number))
                    result = drive(target, body, clients=1, seconds=args.round_seconds)
                    results[target.name].append(result)
                    print_round(result)
    finally:
        for target, _ in targets:
            stop(target)
    return tuple(
        RoundResult(name, 0, [x for r in results[name] for x in r.latencies]) for name in ("empty", "big")
    )


def scale(args) -> None:
    """p50 of one full sync at a time: an empty database against 10,000 stations / 200,000 banks."""
    import psycopg

    print(f"machine: {machine()}")
    print(f"command: {shlex.join(sys.argv)}")
    targets = []
    for offset, (label, database) in enumerate((("empty", "bench_scale_empty"), ("big", "bench_scale_big"))):
        authorization = prepare_ours(args.pg, database)
        if label == "big":
            started = time.time()
            with psycopg.connect(f"{args.pg}/{database}", autocommit=True) as connection:
                for statement in BIG_FLEET_SQL.strip().split(";\n"):
                    if statement.strip():
                        connection.execute(statement.replace("%(stations)s", str(args.big_stations)))
                stations = connection.execute("SELECT count(*) FROM stations_station").fetchone()[0]
                banks = connection.execute("SELECT count(*) FROM stations_powerbank").fetchone()[0]
            print(f"  big database: {stations} stations, {banks} power banks (loaded in {time.time() - started:.1f} s)")
        target = Target(label, args.port + 3 + offset, authorization)
        targets.append((target, database))
    empty, big = empty_against_big(targets, args)
    ratio = big.pct(0.5) / empty.pct(0.5)
    print(f"\n  p50 empty {empty.pct(0.5):.2f} ms, p50 big {big.pct(0.5):.2f} ms: big / empty = {ratio:.2f} "
          f"({(ratio - 1) * 100:+.0f}%)")

# ---------------------------------------------------------------------------- soak


class Fleet:
    """Where every bank is, as the cabinets see it; messages are built from this model."""

    def __init__(self, stations: int, slots: int, occupancy: float, seed: int = 5):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.slots = slots
        self.layout: dict[int, dict[int, str]] = {}
        self.battery: dict[str, int] = {}
        self.rented: set[str] = set()
        self.online: dict[int, bool] = {}
        for index in range(stations):
            occupied = self.rng.sample(range(1, slots + 1), round(slots * occupancy))
            self.layout[index] = {number: bank_serial(index, number) for number in occupied}
            self.online[index] = True
            for bank in self.layout[index].values():
                self.battery[bank] = self.rng.randint(20, 100)

    def full(self, index: int, timestamp: int) -> bytes:
        with self.lock:
            placed = dict(self.layout[index])
            for bank in placed.values():
                self.battery[bank] = min(100, self.battery[bank] + self.rng.randint(0, 3))
            battery = {bank: self.battery[bank] for bank in placed.values()}
        slots = [
            wire.SlotState(n, placed[n], battery[placed[n]], temperature=25) if n in placed else wire.SlotState(n)
            for n in range(1, self.slots + 1)
        ]
        signal_strength = random.Random(timestamp).randint(10, 31)
        message = wire.full_message(station_serial(index), slots, timestamp=timestamp, signal_strength=signal_strength)
        return wire.compact_json(message)

    def take(self) -> tuple[int, int, str] | None:
        """A customer takes a bank out of a random cabinet (the rental is started elsewhere)."""
        with self.lock:
            index = self.rng.choice(list(self.layout))
            if not self.layout[index]:
                return None
            number = self.rng.choice(list(self.layout[index]))
            bank = self.layout[index].pop(number)
            self.rented.add(bank)
            return index, number, bank

    def put_back(self, index: int, number: int, bank: str) -> None:
        """The rental was refused: the bank stays where it was, unless it moved meanwhile."""
        with self.lock:
            if bank in self.rented and number not in self.layout[index]:
                self.rented.discard(bank)
                self.layout[index][number] = bank

    def give_back(self, timestamp: int) -> bytes | None:
        """A rented bank is pushed into a free slot of a random cabinet: a `returned` message."""
        with self.lock:
            if not self.rented:
                return None
            bank = self.rng.choice(sorted(self.rented))
            index = self.rng.choice(list(self.layout))
            free = [n for n in range(1, self.slots + 1) if n not in self.layout[index]]
            if not free:
                return None
            number = self.rng.choice(free)
            self.rented.discard(bank)
            self.layout[index][number] = bank
            battery = self.battery[bank] = max(5, self.battery[bank] - self.rng.randint(10, 40))
        return wire.compact_json(
            wire.returned_message(station_serial(index), bank, number, battery=battery, timestamp=timestamp)
        )

    def status(self, timestamp: int) -> bytes:
        with self.lock:
            index = self.rng.choice(list(self.layout))
            self.online[index] = not self.online[index]
            status = "ONLINE" if self.online[index] else "OFFLINE"
        return wire.compact_json(wire.status_message(station_serial(index), status, timestamp=timestamp))


def soak(args) -> None:
    """Mixed traffic (full, returned, status, stale, 10% identical retries) and rentals, then invariants."""
    print(f"machine: {machine()}")
    print(f"command: {shlex.join(sys.argv)}")
    database = "bench_soak"
    authorization = prepare_ours(args.pg, database)
    env = our_env(args.pg, database)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "main_app.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.db import connections

    from api.rentals.models import Rental, RentalPackage
    from api.rentals.services.rental_service import RentalService
    from api.stations.models import IoTEvent, PowerBank
    from api.stations.tests.fleet import invariant_violations
    from main_app.exceptions import Conflict

    package = RentalPackage.objects.create(name="soak", duration_minutes=60, price=Decimal("60"))
    customers = [
        get_user_model().objects.create_user(username=f"soak{i}", email=f"soak{i}@example.com") for i in range(20)
    ]
    fleet = Fleet(args.stations, args.slots, args.occupancy)
    target = Target("ours", args.port + 4, authorization)
    start(target, gunicorn_command(OUR_PYTHON, target.port, args.workers, args.threads), env=env, cwd=ROOT)
    stop_renting = threading.Event()
    rentals = {"started": 0, "refused": 0}

    def renter():
        rng = random.Random(11)
        try:
            while not stop_renting.wait(args.rental_interval):
                taken = fleet.take()
                if taken is None:
                    continue
                index, number, serial = taken
                bank = PowerBank.objects.filter(serial_number=serial).first()
                try:
                    if bank is None:
                        raise Conflict("bank not registered yet")
                    RentalService.start_rental(user=rng.choice(customers), power_bank=bank, package=package)
                    rentals["started"] += 1
                except Conflict:
                    fleet.put_back(index, number, serial)
                    rentals["refused"] += 1
        finally:
            connections.close_all()

    sent_digests: set[str] = set()
    recent: list[bytes] = []
    digest_lock = threading.Lock()
    mix = {"full": 0, "returned": 0, "status": 0, "stale": 0, "retry": 0}

    def make_body(n: int) -> bytes:
        rng = random.Random(n)
        now = int(time.time())
        roll = rng.random()
        body = None
        kind = "full"
        if roll < 0.10 and recent:
            kind, body = "retry", rng.choice(recent)
        elif roll < 0.25:
            kind, body = "returned", fleet.give_back(now)
        elif roll < 0.30:
            kind, body = "status", fleet.status(now)
        elif roll < 0.35:
            kind, body = "stale", fleet.full(rng.randrange(args.stations), now - 60)
        if body is None:
            kind, body = "full", fleet.full(n % args.stations, now)
        with digest_lock:
            mix[kind] += 1
            sent_digests.add(hashlib.sha256(body).hexdigest())
            recent.append(body)
            del recent[:-200]
        return body

    try:
        for index in range(args.stations):  # every cabinet says hello first
            drive_fixed(target, lambda n, index=index: fleet.full(index, int(time.time())), count=1, clients=1)
        thread = threading.Thread(target=renter)
        thread.start()
        print(f"soak: {args.minutes:g} min, {args.clients} senders, {args.stations} station(s) x {args.slots} slots")
        autovacuum = Autovacuum(args.pg, [database], every=args.vacuum_every)
        print(autovacuum.describe())
        with autovacuum:
            result = drive(target, make_body, clients=args.clients, seconds=args.minutes * 60)
        stop_renting.set()
        thread.join()
    finally:
        stop(target)
    print_round(result)
    print(f"  messages: {mix}; rentals started {rentals['started']}, refused {rentals['refused']}")
    server_errors = sum(count for status, count in result.statuses.items() if status >= 500 or status == 0)
    problems = invariant_violations()
    primaries = set(IoTEvent.objects.filter(duplicate_of__isnull=True).values_list("body_sha256", flat=True))
    missing = sent_digests - primaries
    print(f"  5xx or connection errors: {server_errors}")
    print(f"  invariants: {'hold' if not problems else problems}")
    print(f"  bodies sent {len(sent_digests)}, in the event log once each: {len(sent_digests) - len(missing)}"
          f"{'' if not missing else f', MISSING {len(missing)}'}")
    print(f"  rentals: {Rental.objects.count()} ({Rental.objects.filter(status='COMPLETED').count()} completed)")
    if server_errors or problems or missing or result.errors:
        raise SystemExit("soak failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", PG_DEFAULT), help="PostgreSQL server URL without a database")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker (gthread), both sides")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--slots", type=int, default=24)
    parser.add_argument("--occupancy", type=float, default=0.7)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=15)
    parser.add_argument("--fixed-seconds", type=float, default=60, help="length of compare's fixed-rate phase")
    parser.add_argument("--ramp-seconds", type=float, default=2, help="uncounted start of the fixed-rate phase")
    parser.add_argument("--big-stations", type=int, default=10_000)
    parser.add_argument("--vacuum-every", type=float, default=None, metavar="SECONDS",
                        help="VACUUM each whole database after every SECONDS of its traffic, instead of doing what "
                             "autovacuum would by its rules (where the server has autovacuum off)")
    parser.add_argument("--target-multiple", type=float, default=6.0, help="fixed-rate phase: this many times the seed")
    sub = parser.add_subparsers(dest="command", required=True)
    compare_parser = sub.add_parser("compare", help="throughput, CPU and latency: ours against the seed (and the limit)")
    compare_parser.add_argument("--pairs", type=int, default=12, help="short rounds of ours with metrics on and off")
    compare_parser.add_argument("--pair-seconds", type=float, default=5, help="length of each of those rounds")
    compare_parser.add_argument("--no-metrics-off", action="store_true",
                                help="leave out the side that runs ours with METRICS_ENABLED=false")
    sub.add_parser("scale", help="latency on an empty database against 10,000 stations / 200,000 banks")
    log_parser = sub.add_parser(
        "eventlog", help="full sync latency on an empty event log against 10 million rows over 30 days, and the daily upkeep"
    )
    log_parser.add_argument("--rows", type=int, default=10_000_000)
    log_parser.add_argument("--days", type=int, default=30)
    log_parser.add_argument("--plain-days", type=int, default=3, help="days copied into a plain table for the DELETE")
    fixed_parser = sub.add_parser("fixed", help="ours alone at a fixed rate, to try one setting against another")
    fixed_parser.add_argument("--rate", type=float, required=True, help="full syncs per second offered")
    fixed_parser.add_argument("--seconds", type=float, default=30)
    fixed_parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                              help="an environment setting for the server (repeatable)")
    soak_parser = sub.add_parser("soak", help="mixed traffic and rentals for a few minutes, then invariants")
    soak_parser.add_argument("--minutes", type=float, default=3)
    soak_parser.add_argument("--rental-interval", type=float, default=0.2, help="seconds between rentals")
    parser.add_argument("--seed-dir", type=Path, default=os.environ.get("BENCH_SEED_DIR"),
                        help="the seed baseline's checkout (compare only; or BENCH_SEED_DIR)")
    parser.add_argument("--limit-dir", type=Path, default=os.environ.get("BENCH_LIMIT_DIR"),
                        help="the bare limit app's folder, with limit_app.py (compare's third side; or BENCH_LIMIT_DIR)")
    args = parser.parse_args()
    if args.command == "compare":
        if args.seed_dir is None or not (Path(args.seed_dir) / "manage.py").is_file():
            parser.error("compare needs --seed-dir (or BENCH_SEED_DIR): the seed baseline's checkout, with its manage.py")
        global SEED_DIR, LIMIT_DIR
        SEED_DIR = Path(args.seed_dir).resolve()
        if args.limit_dir is not None:
            if not (Path(args.limit_dir) / "limit_app.py").is_file():
                parser.error("--limit-dir (or BENCH_LIMIT_DIR) must name the folder holding limit_app.py")
            LIMIT_DIR = Path(args.limit_dir).resolve()
    {"compare": compare, "scale": scale, "soak": soak, "fixed": fixed, "eventlog": event_log}[args.command](args)


if __name__ == "__main__":
    main()
