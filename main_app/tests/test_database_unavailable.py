"""
"The database is unavailable" (503 with Retry-After) is told from "this statement failed"
(500) by the driver's SQLSTATE, or SQLite's result code, never by the words of its message.
"""

import socket
import sqlite3
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psycopg
from django.db import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from django.db.backends.postgresql.base import DatabaseWrapper
from django.db.utils import ConnectionHandler, DatabaseErrorWrapper
from django.test import SimpleTestCase
from psycopg import errors as pg

from main_app.exceptions import ServiceUnavailable, is_database_unavailable, to_api_error

# Each message says the opposite of what its SQLSTATE means: only the SQLSTATE may count.
UNAVAILABLE = {
    "08000 connection exception": pg.ConnectionException("syntax error"),
    "08001 unable to connect": pg.SqlclientUnableToEstablishSqlconnection("no such column"),
    "08006 connection failure": pg.ConnectionFailure("duplicate key"),
    "08P01 protocol violation": pg.ProtocolViolation("permission denied"),
    "53100 disk full": pg.DiskFull("value too long"),
    "53200 out of memory": pg.OutOfMemory("division by zero"),
    "53300 too many connections": pg.TooManyConnections("syntax error"),
    "57P01 admin shutdown": pg.AdminShutdown("no such table"),
    "57P02 crash shutdown": pg.CrashShutdown("invalid input"),
    "57P03 cannot connect now": pg.CannotConnectNow("syntax error"),
    "57P05 idle session timeout": pg.IdleSessionTimeout("bad sql"),
    "no SQLSTATE: connecting failed": psycopg.OperationalError("syntax error at or near"),
    "no SQLSTATE: connection closed": psycopg.InterfaceError("column does not exist"),
}
AVAILABLE = {
    "42703 undefined column": pg.UndefinedColumn("could not connect to server"),
    "42601 syntax error": pg.SyntaxError("connection refused"),
    "23505 unique violation": pg.UniqueViolation("server closed the connection unexpectedly"),
    "22001 value too long": pg.StringDataRightTruncation("the database system is shutting down"),
    "57014 query canceled": pg.QueryCanceled("terminating connection: timeout"),
    "57P04 database dropped": pg.DatabaseDropped("the database system is starting up"),
    "55P03 lock not available": pg.LockNotAvailable("connection timeout"),
    "40P01 deadlock": pg.DeadlockDetected("terminating connection due to administrator command"),
    "no SQLSTATE: value refused by psycopg": psycopg.DataError("could not connect"),
    "no SQLSTATE: query refused by psycopg": psycopg.ProgrammingError("connection is bad"),
}


def as_django_raises(driver_error: BaseException, module=psycopg) -> BaseException:
    """The error Django's backend raises for this driver error (its class, `from` the driver's)."""
    wrapper = DatabaseErrorWrapper(SimpleNamespace(Database=module, errors_occurred=False))
    try:
        with wrapper:
            raise driver_error
    except Exception as django_error:
        return django_error
    raise AssertionError("not raised")


def closed_port() -> socket.socket:
    """A bound TCP socket on 127.0.0.1 that does not listen: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class PsycopgSqlstateTests(SimpleTestCase):
    def test_connection_shutdown_and_resource_sqlstates_mean_unavailable(self):
        for name, driver_error in UNAVAILABLE.items():
            with self.subTest(name):
                self.assertTrue(is_database_unavailable(as_django_raises(driver_error)))
                self.assertTrue(is_database_unavailable(driver_error))

    def test_other_sqlstates_are_about_the_statement(self):
        for name, driver_error in AVAILABLE.items():
            with self.subTest(name):
                self.assertFalse(is_database_unavailable(as_django_raises(driver_error)))
                self.assertFalse(is_database_unavailable(driver_error))

    def test_django_keeps_the_driver_error_it_wraps(self):
        error = as_django_raises(pg.AdminShutdown("terminating connection due to administrator command"))

        self.assertIsInstance(error, OperationalError)
        self.assertEqual(error.__cause__.sqlstate, "57P01")

    def test_an_unavailable_database_is_a_503_with_retry_after(self):
        with self.assertLogs("main_app.exceptions", "ERROR") as logs:
            error = to_api_error(as_django_raises(pg.CannotConnectNow("the database system is starting up")))

        self.assertIsInstance(error, ServiceUnavailable)
        self.assertEqual((error.status_code, error.code), (503, "SERVICE_UNAVAILABLE"))
        self.assertIn("Retry-After", error.headers)
        self.assertIn("CannotConnectNow 57P03", "\n".join(logs.output))
        self.assertNotIn("starting up", "\n".join(logs.output))

    def test_a_refused_statement_is_a_500(self):
        with self.assertLogs("main_app.exceptions", "ERROR"):
            error = to_api_error(as_django_raises(pg.UndefinedColumn("could not connect to server")))

        self.assertEqual((error.status_code, error.code), (500, "INTERNAL_ERROR"))
        self.assertEqual(error.headers, {})


class RealConnectionTests(SimpleTestCase):
    """Failures of real connections to 127.0.0.1 where no server listens."""

    def test_psycopg_connecting_to_a_closed_port_fails_without_a_sqlstate(self):
        with closed_port() as sock:
            port = sock.getsockname()[1]
            with self.assertRaises(psycopg.OperationalError) as raised:
                psycopg.connect(host="127.0.0.1", port=port, dbname="x", user="x", connect_timeout=3)

        self.assertIsNone(raised.exception.sqlstate)
        self.assertTrue(is_database_unavailable(raised.exception))

    def test_django_connecting_to_a_closed_port_is_a_503(self):
        with closed_port() as sock:
            # Django's defaults filled in, under an alias of its own (the tests' database stays shut).
            settings_dict = ConnectionHandler(
                {
                    "default": {
                        "ENGINE": "django.db.backends.postgresql",
                        "HOST": "127.0.0.1",
                        "PORT": sock.getsockname()[1],
                        "NAME": "chargeghar_nowhere",
                        "USER": "nobody",
                        "OPTIONS": {"connect_timeout": 3},
                    }
                }
            ).settings["default"]
            connection = DatabaseWrapper(settings_dict, alias="unreachable")
            try:
                # What ensure_connection() does (the test runners block that one name).
                with self.assertRaises(OperationalError) as raised, connection.wrap_database_errors:
                    connection.connect()
            finally:
                connection.close()

        self.assertIsInstance(raised.exception.__cause__, psycopg.OperationalError)
        self.assertIsNone(raised.exception.__cause__.sqlstate)
        with self.assertLogs("main_app.exceptions", "ERROR"):
            self.assertIsInstance(to_api_error(raised.exception), ServiceUnavailable)


class SqliteResultCodeTests(SimpleTestCase):
    """SQLite has no SQLSTATE; its result codes decide, from real errors of the sqlite3 module."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="chargeghar-sqlite-")
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def sqlite_error(self, run) -> BaseException:
        try:
            run()
        except sqlite3.Error as driver_error:
            return as_django_raises(driver_error, module=sqlite3)
        raise AssertionError("SQLite did not fail")

    def test_database_is_locked_means_unavailable(self):
        path = self.dir / "db.sqlite3"
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
        self.addCleanup(waiter.close)

        error = self.sqlite_error(lambda: waiter.execute("BEGIN IMMEDIATE"))

        self.assertIsInstance(error, OperationalError)
        self.assertEqual(error.__cause__.sqlite_errorname, "SQLITE_BUSY")
        self.assertTrue(is_database_unavailable(error))

    def test_a_database_file_that_cannot_be_opened_means_unavailable(self):
        error = self.sqlite_error(lambda: sqlite3.connect(self.dir / "no-such-dir" / "db.sqlite3"))

        self.assertEqual(error.__cause__.sqlite_errorname, "SQLITE_CANTOPEN")
        self.assertTrue(is_database_unavailable(error))

    def test_bad_sql_and_broken_constraints_are_not(self):
        db = sqlite3.connect(":memory:")
        self.addCleanup(db.close)
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES (1)")
        closed = sqlite3.connect(":memory:")
        closed.close()
        for name, run, django_class in (
            ("no such column", lambda: db.execute("SELECT nope FROM t"), OperationalError),
            ("syntax error", lambda: db.execute("SELEC 1"), OperationalError),
            ("unique constraint", lambda: db.execute("INSERT INTO t VALUES (1)"), IntegrityError),
            ("closed connection", lambda: closed.execute("SELECT 1"), ProgrammingError),
        ):
            with self.subTest(name):
                error = self.sqlite_error(run)
                self.assertIsInstance(error, django_class)
                self.assertFalse(is_database_unavailable(error))


class ErrorsWithoutADriverErrorTests(SimpleTestCase):
    """Django raises its database errors only from a driver's; a bare one goes by its class."""

    def test_bare_operational_and_interface_errors_mean_unavailable(self):
        self.assertTrue(is_database_unavailable(OperationalError("no such column")))
        self.assertTrue(is_database_unavailable(InterfaceError("syntax error")))

    def test_other_errors_do_not(self):
        for error in (
            ProgrammingError("could not connect"),
            IntegrityError("connection refused"),
            RuntimeError("server closed the connection"),
            ConnectionRefusedError("connection refused"),
        ):
            with self.subTest(type(error).__name__):
                self.assertFalse(is_database_unavailable(error))
