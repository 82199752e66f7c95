"""
Several hosts on one database, nothing lost: bench/multihost.py, CI-sized.

Three gunicorn instances behind HAProxy (round robin, health checks on /readyz), through
PgBouncer in transaction mode where it is installed, a mixed soak from the fleet simulator
with the sender's retry schedule, one instance killed with SIGKILL mid-run and started again;
the script then checks that every body the sender considers delivered is in the event log
exactly once, that the fleet invariants hold and that every error the sender saw was retried
to success, and exits non-zero otherwise.

PostgreSQL only (the script needs a server several processes share; it uses a database of
its own, bench_mh_ci, on the test database's server). Needs Debian's haproxy package, and
uses pgbouncer when present; skips, saying why, without them. REQUIRE_HAPROXY=1 (set by
.ci/run once it has installed both) makes a skip a failure.
"""

import os
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.test import SimpleTestCase

ROOT = Path(settings.BASE_DIR)
SCRIPT = ROOT / "bench" / "multihost.py"
GUNICORN = Path(sys.executable).parent / "gunicorn"
ON_POSTGRES = connection.vendor == "postgresql"
REQUIRED = os.environ.get("REQUIRE_HAPROXY") == "1"
SECONDS = 32


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if candidate.exists() else None


HAPROXY = find_tool("haproxy")
PGBOUNCER = find_tool("pgbouncer")


def _missing() -> str | None:
    if HAPROXY is None:
        return "haproxy is not installed (Debian's haproxy package)"
    if REQUIRED and PGBOUNCER is None:
        return "pgbouncer is not installed (Debian's pgbouncer package)"
    if not GUNICORN.exists():
        return f"gunicorn is not installed beside {sys.executable}"
    return None


if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:  # CI must never skip this on PostgreSQL
    raise RuntimeError("REQUIRE_POSTGRES is set but the test database is not PostgreSQL")


def server_url() -> str:
    """The test database's server, as a URL without a database name."""
    db = settings.DATABASES["default"]
    credentials = quote(db.get("USER") or "postgres", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"


@unittest.skipUnless(ON_POSTGRES, "several hosts on one database need PostgreSQL (set DATABASE_URL=postgres://...)")
@unittest.skipIf(_missing() and not REQUIRED, _missing() or "")
class SeveralHostsTests(SimpleTestCase):
    def test_a_killed_instance_loses_nothing_behind_haproxy(self):
        if _missing():
            raise AssertionError(f"REQUIRE_HAPROXY=1 but {_missing()}")
        command = [
            sys.executable, str(SCRIPT), "--pg", server_url(), "--database", "bench_mh_ci",
            "--seconds", str(SECONDS), "--kill-at", "10", "--restart-at", "19",
            # Ports of their own, so that a bench run on the default ports does not collide.
            "--port", "8450", "--pgbouncer-port", "6550",
            "--stations", "40", "--interval", "2", "--summary-every", "30",
        ]
        if PGBOUNCER is not None:
            command.append("--pgbouncer")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        output = completed.stdout + completed.stderr
        self.assertEqual(completed.returncode, 0, output)
        summary = completed.stdout.strip().splitlines()[-1]
        pattern = (
            r"multihost: 3 instances, pgbouncer (on|off), (\d+) bodies delivered, (\d+) in the event log "
            r"exactly once, (no sender errors|\d+ sender errors? all retried to success), invariants hold, "
            r"instance 2 killed at [\d.]+ s and back at [\d.]+ s"
        )
        match = re.fullmatch(pattern, summary)
        self.assertIsNotNone(match, output)
        self.assertEqual(match.group(1), "on" if PGBOUNCER else "off")
        delivered, exactly_once = int(match.group(2)), int(match.group(3))
        self.assertEqual(delivered, exactly_once, output)
        self.assertGreater(delivered, 300, output)  # the soak really sent something
        self.assertIn("invariants: hold", output)
        self.assertRegex(output, r"web2 served [1-9]\d* after its restart")
