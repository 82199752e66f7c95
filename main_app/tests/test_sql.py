"""The hot path's SQL helpers (main_app/sql.py): the kept cursor and the values' conversion."""

from datetime import UTC, datetime, timedelta, timezone

from django.db import connection
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext

from api.stations.models import IoTEvent
from main_app import sql


class KeptCursorTests(TransactionTestCase):
    def test_one_cursor_serves_the_connection_s_statements(self):
        first = sql.cursor()
        self.assertEqual(sql.fetch("SELECT 1", []), [(1,)])
        self.assertIs(sql.cursor(), first)

    def test_a_new_connection_gets_a_new_cursor_that_works(self):
        first, driver_connection = sql.cursor(), connection.connection
        connection.close()

        self.assertEqual(sql.fetch("SELECT 2", []), [(2,)])
        if connection.connection is driver_connection:
            # SQLite's in-memory test database is never really closed: the same connection.
            self.assertIs(sql.cursor(), first)
        else:
            self.assertIsNot(sql.cursor(), first)
            self.assertIs(sql.cursor().cursor.connection, connection.connection)

    def test_statements_are_logged_while_logging_is_on_and_not_after(self):
        sql.fetch("SELECT 1", [])
        with CaptureQueriesContext(connection) as captured:
            sql.fetch("SELECT 3", [])
        self.assertEqual([query["sql"] for query in captured.captured_queries], ["SELECT 3"])
        # Logging off again: the plain cursor, which logs nothing.
        self.assertFalse(connection.queries_logged)
        sql.fetch("SELECT 4", [])
        self.assertNotIn("SELECT 4", [query["sql"] for query in connection.queries_log])


class DbValueTests(TestCase):
    def test_a_time_is_stored_as_the_same_moment_whatever_its_offset(self):
        field = IoTEvent._meta.get_field("received_at")
        moment = datetime(2026, 12, 4, 12, 30, 15, 123456, tzinfo=UTC)
        for value in (moment, moment.astimezone(timezone(timedelta(hours=5, minutes=45)))):
            (stored,) = sql.fetch(
                f"SELECT {'CAST(%s AS timestamptz)' if connection.vendor == 'postgresql' else '%s'}",
                [sql.db_value(field, value)],
            )[0]
            if isinstance(stored, str):  # SQLite keeps the text the field made
                stored = datetime.fromisoformat(stored).replace(tzinfo=UTC)
            self.assertEqual(stored, moment)
