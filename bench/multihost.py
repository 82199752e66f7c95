#!/usr/bin/env python3
"""
Several web hosts on one database, and nothing lost when one of them dies.

Three gunicorn instances, each on its own port with its own metrics directory, run behind
HAProxy (round robin, health checks on /readyz), on one PostgreSQL database, optionally
through PgBouncer in transaction mode. The fleet simulator (iot_tools/simulator.py) plays a
fleet of cabinets through HAProxy with the reference sender (iot_tools/client.py: only 200
is success, 3 attempts 2 s and 4 s apart, the identical body each time): full syncs,
returns, status changes, identical resends and out-of-date full syncs, and customers'
rentals started with the rental service, whose ejections go to the simulated IoT system's
API. Mid-run one instance's gunicorn (master and workers: the process group) is killed with
SIGKILL; later it is started again. At the end:

- every body the sender considers delivered has exactly one primary row in the event log
  (by digest), settled PROCESSED or STALE, and no body was applied twice (no repeat row is
  settled as applied, no digest has two applied rows);
- the fleet invariants hold (api/stations/tests/fleet.py);
- every error the sender saw (a 5xx, no answer, a refused login) was followed by a retry
  that succeeded: nothing was dropped;
- the restarted instance was taken back by HAProxy and served requests again.

    .venv/bin/python bench/multihost.py                        # 3 minutes, straight to PostgreSQL
    .venv/bin/python bench/multihost.py --pgbouncer            # through PgBouncer, transaction mode
    .venv/bin/python bench/multihost.py --pgbouncer --seconds 40 --kill-at 12 --restart-at 22

Needs Debian's haproxy package (and pgbouncer for --pgbouncer). Everything listens on
127.0.0.1: HAProxy on --port, the instances on the next three ports, the simulated IoT
system's API on --port + 9, PgBouncer on --pgbouncer-port. The database (--database,
default bench_mh) is dropped and created again. Exit status 0 when every check holds; the
last line is the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench import (  # noqa: E402
    OUR_PYTHON,
    PG_DEFAULT,
    ROOT,
    SECRET,
    Autovacuum,
    gunicorn_command,
    machine,
    our_env,
    recreate_database,
    run,
)
from iot_tools.client import IoTSender, SendResult  # noqa: E402

SENDER_EMAIL = "iot@multihost.bench"
API_USERNAME = "iot-api"


def find_tool(name: str) -> str | None:
    """A Debian daemon's binary: on PATH, or in /usr/sbin (not on a non-root user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if candidate.exists() else None


# ---------------------------------------------------------------------------- configuration


def haproxy_config(*, port: int, backends: list[tuple[str, int]], maxconn: int, stats_socket: Path) -> str:
    """
    Round robin over the instances, each health-checked on GET /readyz every 500 ms: two
    failed checks (about a second) take an instance out, two passing ones put it back.

    `retries` with `option redispatch 1` covers connection failures only (HAProxy's default
    `retry-on conn-failure`): a request that never reached an instance goes to another one,
    which is always safe. A request an instance had already received when it died is not
    replayed here: it may have been applied, and its answer is lost. HAProxy answers it 502
    (or the connection drops) and the sender's own retry schedule resends the body, which the
    event log recognises by its digest. Each instance takes `maxconn` requests at a time (its
    workers x threads); the rest wait in HAProxy's queue, where a request can still go to
    another instance, rather than in a socket backlog that dies with the instance.
    """
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{server_port} maxconn {maxconn}" for name, server_port in backends
    )
    return f"""\
global
    maxconn 2000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 20s
    timeout queue 15s
    timeout http-keep-alive 2s
    retries 3
    option redispatch 1
    option forwardfor

frontend iot
    bind 127.0.0.1:{port}
    default_backend web

backend web
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server check inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
{servers}
"""


def pgbouncer_config(*, port: int, pg: str, database: str, directory: Path, pool_size: int) -> str:
    """
    Transaction pooling: a server connection belongs to a client for one transaction only.
    PgBouncer 1.18 keeps no prepared statements across that (1.21 can, with
    max_prepared_statements), so the instances run with DATABASE_PREPARE_THRESHOLD=0.
    """
    parsed = urlsplit(pg)
    host, pg_port, user = parsed.hostname or "127.0.0.1", parsed.port or 5432, parsed.username or "postgres"
    password = f" password={parsed.password}" if parsed.password else ""
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    return f"""\
[databases]
{database} = host={host} port={pg_port} dbname={database} user={user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / 'userlist.txt'}
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_lifetime = 3600
ignore_startup_parameters = extra_float_digits
"""


# ---------------------------------------------------------------------------- processes


@dataclass
class Daemon:
    """A process of the run, in a process group of its own, its output in a log file."""

    name: str
    command: list[str]
    env: dict
    log: Path
    process: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}: {shlex.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group: the gunicorn master and its workers at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"Host": "127.0.0.1"})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()
    except (OSError, http.client.HTTPException):
        return None


def wait_until(check, what: str, daemon: Daemon | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if daemon is not None and not daemon.alive():
            raise SystemExit(f"{daemon.name} exited while waiting for {what}:\n{daemon.tail()}")
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}" + (f":\n{daemon.tail()}" if daemon else ""))


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class HAProxyStats:
    """The servers' states from HAProxy's stats socket, polled; every change is kept with its time."""

    def __init__(self, path: Path, clock):
        self.path = path
        self.clock = clock
        self.states: dict[str, str] = {}
        self.changes: list[tuple[float, str, str]] = []  # (seconds into the run, server, new state)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def show_stat(self) -> list[dict]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.path))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]

    def servers(self) -> dict[str, dict]:
        return {row["svname"]: row for row in self.show_stat() if row["pxname"] == "web" and row["svname"] not in ("BACKEND",)}

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            try:
                servers = self.servers()
            except OSError:
                continue
            for name, row in servers.items():
                state = row["status"].split()[0]  # "UP", "DOWN", "UP 1/2" (going down), ...
                if self.states.get(name) != state:
                    if name in self.states:
                        self.changes.append((self.clock(), name, state))
                    self.states[name] = state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- the sender


class RecordingSender(IoTSender):
    """The reference sender, keeping how every body's delivery ended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes: list[tuple[str, SendResult]] = []
        self._outcomes_lock = threading.Lock()

    def send(self, body, *, on_request=None) -> SendResult:
        result = super().send(body, on_request=on_request)
        with self._outcomes_lock:
            self.outcomes.append((hashlib.sha256(bytes(body)).hexdigest(), result))
        return result


def describe_error(record) -> str:
    if record.stage == "login":
        return f"login {record.status or 'no answer'}"
    if record.status is None:
        return "no answer"
    return str(record.status) + (f" {record.error_code}" if record.error_code else "")


# ---------------------------------------------------------------------------- the run


@dataclass
class Summary:
    instances: int
    pgbouncer: bool
    seconds: float
    killed: int
    kill_at: float | None = None
    back_at: float | None = None
    messages: int = 0
    delivered: int = 0
    exactly_once: int = 0
    errors: Counter = field(default_factory=Counter)
    bodies_with_errors: int = 0
    retried_to_success: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)  # every check that failed
    violations: list[str] = field(default_factory=list)  # of those, the fleet invariants'

    def line(self) -> str:
        errors = sum(self.errors.values())
        if not errors and errors_ok(self):
            error_text = "no sender errors"
        elif errors_ok(self):
            error_text = f"{errors} sender error{'s' if errors != 1 else ''} all retried to success"
        else:
            error_text = f"{errors} sender errors, {self.retried_to_success} of {self.bodies_with_errors} bodies retried to success"
        return (
            f"multihost: {self.instances} instances, pgbouncer {'on' if self.pgbouncer else 'off'}, "
            f"{self.delivered} bodies delivered, {self.exactly_once} in the event log exactly once, "
            f"{error_text}, invariants {'hold' if not self.violations else 'BROKEN'}, "
            f"instance {self.killed} killed at {fmt(self.kill_at)} and back at {fmt(self.back_at)}"
        )


def errors_ok(summary: Summary) -> bool:
    return summary.dropped == 0 and summary.retried_to_success == summary.bodies_with_errors


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def soak(args) -> Summary:
    haproxy = find_tool("haproxy")
    pgbouncer = find_tool("pgbouncer") if args.pgbouncer else None
    if haproxy is None:
        raise SystemExit("haproxy is not installed (Debian: apt-get install -y haproxy)")
    if args.pgbouncer and pgbouncer is None:
        raise SystemExit("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
    ports = [args.port + n for n in range(1 + args.instances)] + [args.port + 9]
    if args.pgbouncer:
        ports.append(args.pgbouncer_port)
    busy = [port for port in ports if not port_free(port)]
    if busy:
        raise SystemExit(f"ports in use: {busy}")
    kill_at = args.seconds * 0.35 if args.kill_at is None else args.kill_at
    restart_at = args.seconds * 0.65 if args.restart_at is None else args.restart_at
    if not 0 < kill_at < restart_at < args.seconds:
        raise SystemExit("need 0 < --kill-at < --restart-at < --seconds")

    print(f"machine: {machine()}")
    print(f"command: {shlex.join(sys.argv)}")
    workdir = Path(tempfile.mkdtemp(prefix="multihost-"))
    workdir.chmod(0o755)  # PgBouncer runs as the database's user and reads its files here
    daemons: list[Daemon] = []
    cleanups: list = []  # what drive() started, stopped before the daemons
    keep = args.keep
    try:
        recreate_database(args.pg, args.database)

        # PgBouncer first: the instances' and this script's connections go through it.
        if args.pgbouncer:
            ini = workdir / "pgbouncer.ini"
            ini.write_text(pgbouncer_config(port=args.pgbouncer_port, pg=args.pg, database=args.database,
                                            directory=workdir, pool_size=args.pool_size))
            command = [pgbouncer, str(ini)]
            if os.geteuid() == 0:
                command[1:1] = ["-u", urlsplit(args.pg).username or "postgres"]  # it will not run as root
            bouncer = Daemon("pgbouncer", command, dict(os.environ), workdir / "pgbouncer.log")
            daemons.append(bouncer)
            bouncer.start()
            wait_until(lambda: not port_free(args.pgbouncer_port), "pgbouncer to listen", bouncer)
            parsed = urlsplit(args.pg)
            credentials = parsed.netloc.rsplit("@", 1)[0] + "@" if "@" in parsed.netloc else ""
            app_pg = f"{parsed.scheme}://{credentials}127.0.0.1:{args.pgbouncer_port}"
        else:
            app_pg = args.pg

        base_env = our_env(app_pg, args.database)
        base_env.update(
            DJANGO_ENV_FILE="",
            # HAProxy adds X-Forwarded-For; the client address is the sender's, as in production.
            IOT_TRUSTED_PROXIES="127.0.0.1",
        )
        if args.pgbouncer:
            # Transaction pooling before PgBouncer 1.21: no prepared statements (the setting
            # also keeps psycopg's client-side binding, whose queries are never prepared).
            base_env["DATABASE_PREPARE_THRESHOLD"] = "0"
            # And no server-side cursors: outside a transaction Django declares them WITH
            # HOLD, and the next fetch may reach another server connection.
            base_env["DATABASE_DISABLE_SERVER_SIDE_CURSORS"] = "true"
        run([OUR_PYTHON, "manage.py", "migrate", "--noinput"], env=base_env, cwd=ROOT)
        password = secrets.token_urlsafe(24)
        run([OUR_PYTHON, "manage.py", "create_iot_sender", "--email", SENDER_EMAIL],
            env=dict(base_env, IOT_SENDER_PASSWORD=password), cwd=ROOT)

        # --set: for the instances only (migrate and this script's own queries keep base_env).
        instance_env = dict(base_env)
        for assignment in args.set:
            name, _, value = assignment.partition("=")
            instance_env[name] = value
        instances = []
        for number in range(1, args.instances + 1):
            env = dict(instance_env, PROMETHEUS_MULTIPROC_DIR=str(workdir / f"metrics-{number}"))
            command = gunicorn_command(OUR_PYTHON, args.port + number, args.workers, args.threads)
            instance = Daemon(f"web{number}", command, env, workdir / f"web{number}.log")
            instances.append(instance)
            daemons.append(instance)
            instance.start()
        for number, instance in enumerate(instances, 1):
            wait_until(lambda number=number: http_status(args.port + number, "/readyz") == 200,
                       f"{instance.name} to be ready", instance)

        socket_path = workdir / "haproxy.sock"
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(
            port=args.port,
            backends=[(instance.name, args.port + number) for number, instance in enumerate(instances, 1)],
            maxconn=args.workers * args.threads,
            stats_socket=socket_path,
        ))
        run([haproxy, "-c", "-q", "-f", str(config)], env=os.environ, cwd=ROOT)
        balancer = Daemon("haproxy", [haproxy, "-db", "-f", str(config)], dict(os.environ), workdir / "haproxy.log")
        daemons.append(balancer)
        balancer.start()
        wait_until(lambda: http_status(args.port, "/readyz") == 200, "haproxy to answer", balancer)

        # This process starts the rentals, with the same database settings as the instances.
        os.environ.update(base_env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "main_app.settings"
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        # A rental whose cabinet went offline is a warning of the rental service; the run's
        # own lines say how many there were.
        for name in ("api.rentals", "api.iot_system"):
            logging.getLogger(name).setLevel(logging.ERROR)
        summary = drive(args, instances, socket_path, password, kill_at, restart_at, cleanups)
        keep = keep or bool(summary.problems) or not errors_ok(summary)
        return summary
    except BaseException:
        keep = True
        raise
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        for daemon in reversed(daemons):
            daemon.stop()
        if keep:
            print(f"  logs and configuration kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def drive(args, instances, socket_path, password, kill_at, restart_at, cleanups) -> Summary:
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.db import connection, connections

    from api.iot_system.client import IoTSystemClient
    from api.rentals.models import Rental, RentalPackage
    from api.stations.management.commands.simulate_stations import RentalStarter
    from api.stations.models import IoTEvent, Station
    from api.stations.tests.fleet import invariant_violations
    from iot_tools.simulator import ApiBehaviour, Fleet, FleetConfig, FleetRunner, IoTApiServer

    package = RentalPackage.objects.create(name="multihost", duration_minutes=60, price=Decimal("60"))
    customers = [
        get_user_model().objects.create_user(username=f"mh{i}", email=f"mh{i}@multihost.bench") for i in range(20)
    ]
    connection.close()

    begin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - begin

    config = FleetConfig(
        stations=args.stations, slots=args.slots, interval=args.interval, seed=args.seed,
        # Twice the simulator's default share of identical resends and out-of-date full syncs.
        resend_probability=0.06, stale_probability=0.06,
    )
    fleet = Fleet(config, start=time.time(), wait_for_takes=True, takes_by_request=True)
    api_password = secrets.token_urlsafe(16)
    api_server = IoTApiServer(fleet, username=API_USERNAME, password=api_password, port=args.port + 9,
                              behaviour=ApiBehaviour(delay=0.2), seed=args.seed).start()
    cleanups.append(api_server.stop)
    cabinet = IoTSystemClient(api_server.url, API_USERNAME, api_password, connect_timeout=3, timeout=10,
                              popup_timeout=20, check_timeout=15)
    sender = RecordingSender(f"http://127.0.0.1:{args.port}", SENDER_EMAIL, password, SECRET)
    lines: list[str] = []

    def write(text: str) -> None:
        lines.append(text)
        print(f"  {text}", flush=True)

    runner = FleetRunner(fleet, sender, workers=args.senders, write=write,
                         on_take=RentalStarter(package, customers, cabinet), summary_every=args.summary_every)
    stats = HAProxyStats(socket_path, clock)
    stats.start()
    cleanups.append(stats.stop)
    victim = instances[args.kill - 1]
    victim_port = args.port + args.kill
    events: dict[str, float] = {}
    served_before_restart = {}

    def in_flight() -> int:
        try:
            return int(stats.servers()[victim.name]["scur"])
        except (OSError, KeyError, ValueError):
            return 0

    def chaos() -> None:
        time.sleep(max(0.0, kill_at - clock()))
        # At a moment when the instance is working on requests (within 3 s), so that some
        # answers are lost with it: those are what the sender's retries must cover.
        deadline = time.monotonic() + 3
        while in_flight() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        working = in_flight()
        victim.kill()
        events["killed"] = clock()
        print(f"  [{events['killed']:6.1f}s] {victim.name}: SIGKILL to gunicorn's process group, "
              f"{working} request(s) in flight there", flush=True)
        time.sleep(max(0.0, restart_at - clock()))
        served_before_restart.update({name: int(row["stot"]) for name, row in stats.servers().items()})
        victim.start()
        events["started"] = clock()
        wait_until(lambda: http_status(victim_port, "/readyz") == 200, f"{victim.name} to be ready again", victim)
        events["ready"] = clock()
        print(f"  [{events['started']:6.1f}s] {victim.name}: started again, ready after "
              f"{events['ready'] - events['started']:.1f} s", flush=True)

    autovacuum = Autovacuum(args.pg, [args.database])
    print(f"soak: {args.seconds:g} s through HAProxy on :{args.port}, {len(instances)} instances x "
          f"{args.workers} workers x {args.threads} threads, pgbouncer {'on' if args.pgbouncer else 'off'}; "
          f"{args.stations} stations x {args.slots} slots, a full sync every ~{args.interval:g} s each, "
          f"{args.senders} sending threads; {victim.name} killed at {kill_at:.0f} s, started at {restart_at:.0f} s")
    print(f"  {autovacuum.describe()}")
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    with autovacuum:
        chaos_thread.start()
        run_stats = runner.run(duration=args.seconds)
        chaos_thread.join(timeout=60)
    ended = clock()
    connections.close_all()
    cabinet.close()
    print(f"  [{ended:6.1f}s] the fleet stopped and every queued message was answered")

    summary = Summary(instances=len(instances), pgbouncer=args.pgbouncer, seconds=args.seconds, killed=args.kill)
    summary.kill_at = events.get("killed")
    summary.back_at = events.get("ready")
    problems = summary.problems
    if "ready" not in events:
        problems.append(f"{victim.name} was not killed and started again during the run")

    # HAProxy: when it took the instance out and back, and what it served afterwards.
    servers = stats.servers()
    for at, name, state in stats.changes:
        print(f"  haproxy: {name} {state} at {at:.1f} s")
    down = next((at for at, name, state in stats.changes if name == victim.name and state == "DOWN"), None)
    up_again = next((at for at, name, state in stats.changes
                     if name == victim.name and state == "UP" and down is not None and at > down), None)
    if down is None or "killed" not in events:
        problems.append(f"haproxy never marked {victim.name} DOWN")
    else:
        print(f"  haproxy: {victim.name} marked DOWN {down - events['killed']:.1f} s after the kill")
    if up_again is None or "started" not in events:
        problems.append(f"haproxy never marked {victim.name} UP again")
    else:
        print(f"  haproxy: {victim.name} marked UP {up_again - events['started']:.1f} s after its start")
    served = {name: int(row["stot"]) for name, row in servers.items()}
    after = served.get(victim.name, 0) - served_before_restart.get(victim.name, 0)
    print(f"  haproxy: requests per instance {served}; {victim.name} served {after} after its restart")
    if after <= 0:
        problems.append(f"{victim.name} served nothing after its restart")
    if args.pgbouncer:
        print(f"  pgbouncer: {pgbouncer_totals(args)}")

    # What the sender saw.
    outcomes = list(sender.outcomes)
    summary.messages = len(outcomes)
    delivered = {digest for digest, result in outcomes if result.ok}
    summary.delivered = len(delivered)
    for _digest, result in outcomes:
        errors = [describe_error(record) for record in result.requests if record.status != 200]
        if errors:
            summary.errors.update(errors)
            summary.bodies_with_errors += 1
            summary.retried_to_success += result.ok
        summary.dropped += result.dropped
    if summary.dropped:
        problems.append(f"{summary.dropped} messages dropped after {sender.max_attempts} attempts")
    if run_stats.exceptions:
        problems.append(f"the simulator raised: {dict(run_stats.exceptions)}")
    print(f"  sender: {summary.messages} messages ({len({d for d, _ in outcomes})} distinct bodies), "
          f"{summary.delivered} bodies delivered, {summary.dropped} dropped; errors seen: "
          f"{dict(summary.errors) or 'none'}")
    print(f"  fleet: {dict(run_stats.sent)}; takes {run_stats.takes}, rentals {dict(run_stats.rentals)}, "
          f"closed by returns {run_stats.rentals_closed}")

    # The event log against what the sender considers delivered.
    primaries: Counter = Counter()
    applied: Counter = Counter()
    repeat_applied = set()
    primary_outcome = {}
    for digest, duplicate_of, outcome in IoTEvent.objects.values_list("body_sha256", "duplicate_of_id", "outcome"):
        if duplicate_of is None:
            primaries[digest] += 1
            primary_outcome[digest] = outcome
        if outcome in ("PROCESSED", "STALE"):
            applied[digest] += 1
            if duplicate_of is not None:
                repeat_applied.add(digest)
    missing = [digest for digest in delivered if primaries[digest] == 0]
    doubled = [digest for digest in delivered if primaries[digest] > 1]
    unsettled = [digest for digest in delivered if primaries[digest] == 1 and primary_outcome[digest] not in ("PROCESSED", "STALE")]
    twice = [digest for digest, count in applied.items() if count > 1] + sorted(repeat_applied)
    summary.exactly_once = sum(1 for digest in delivered if primaries[digest] == 1)
    if missing:
        problems.append(f"{len(missing)} delivered bodies are not in the event log")
    if doubled:
        problems.append(f"{len(doubled)} delivered bodies have more than one primary row")
    if unsettled:
        problems.append(f"{len(unsettled)} delivered bodies are not settled: {Counter(primary_outcome[d] for d in unsettled)}")
    if twice:
        problems.append(f"{len(twice)} bodies applied more than once")
    outcomes_in_log = Counter(IoTEvent.objects.values_list("outcome", flat=True))
    print(f"  event log: {sum(outcomes_in_log.values())} rows {dict(outcomes_in_log)}")

    violations = summary.violations = invariant_violations()
    problems.extend(violations)
    stations = Station.objects.count()
    if stations != args.stations:
        problems.append(f"{stations} stations in the database, {args.stations} in the fleet")
    print(f"  database: {stations} stations, rentals {dict(Counter(Rental.objects.values_list('status', flat=True)))}")
    print(f"  invariants: {'hold' if not violations else violations}")
    connections.close_all()
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return summary


def pgbouncer_totals(args) -> str:
    """Transactions and queries PgBouncer passed on, from its admin console."""
    user = urlsplit(args.pg).username or "postgres"
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(args.pgbouncer_port), "-U", user, "-At", "-F", ",", "-c", "SHOW STATS",
         "pgbouncer"], capture_output=True, text=True, check=False,
    )
    header = ["database", "total_xact_count", "total_query_count"]
    for line in out.stdout.splitlines():
        values = line.split(",")
        if values and values[0] == args.database:
            return f"{int(values[1])} transactions, {int(values[2])} queries passed on"
    return f"no statistics ({out.stderr.strip() or header})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", PG_DEFAULT), help="PostgreSQL server URL without a database")
    parser.add_argument("--database", default="bench_mh", help="dropped and created again (default bench_mh)")
    parser.add_argument("--seconds", type=float, default=180, help="how long the fleet sends (default 180)")
    parser.add_argument("--pgbouncer", action="store_true", help="the instances connect through PgBouncer in transaction mode")
    parser.add_argument("--port", type=int, default=8400, help="HAProxy; the instances take the next ports, the IoT API +9")
    parser.add_argument("--pgbouncer-port", type=int, default=6500)
    parser.add_argument("--pool-size", type=int, default=10, help="PgBouncer's server connections (default 10)")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker (gthread)")
    parser.add_argument("--kill", type=int, default=2, help="which instance is killed (1-based, default 2)")
    parser.add_argument("--kill-at", type=float, default=None, help="seconds into the run (default 35%% of it)")
    parser.add_argument("--restart-at", type=float, default=None, help="seconds into the run (default 65%% of it)")
    parser.add_argument("--stations", type=int, default=60)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a station's full syncs")
    parser.add_argument("--senders", type=int, default=16, help="sending threads")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--summary-every", type=float, default=10.0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment setting for the instances (repeatable), e.g. DATABASE_PREPARE_THRESHOLD=2")
    parser.add_argument("--keep", action="store_true", help="keep the configuration and logs (kept anyway on failure)")
    args = parser.parse_args()
    if not 1 <= args.kill <= args.instances:
        parser.error("--kill must name one of the instances")
    summary = soak(args)
    print(summary.line())
    if summary.problems or not errors_ok(summary):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
