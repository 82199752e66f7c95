"""
A full sync rewrites its station, slots and banks in place (HOT updates) on PostgreSQL:
no new index entries and nothing for VACUUM to clean out of the indexes (migrations 0008
and 0010, docs/performance.md, "Eighth pass"); so does the UPDATE that settles every
delivery's event row (migration 0012, "Ninth pass"). PostgreSQL only: SQLite has no such
updates.
"""

import os
import unittest

from django.db import connection
from django.test import TransactionTestCase

from api.stations.ingest import event_partitions
from api.stations.ingest.delivery import deliver
from api.stations.models import PowerBank, Station, StationSlot
from api.stations.tests.factories import compact, full_payload, now_ts

ON_POSTGRES = connection.vendor == "postgresql"
SKIP_REASON = "HOT updates are PostgreSQL's (set DATABASE_URL=postgres://...)"
if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:  # CI must never skip these
    raise RuntimeError("REQUIRE_POSTGRES is set but the test database is not PostgreSQL")

TABLES = [model._meta.db_table for model in (Station, StationSlot, PowerBank)]
STATIONS = 12
SLOTS = 24


def update_counts(tables=TABLES) -> dict[str, tuple[int, int]]:
    """Every update and every HOT update so far, per table, as the statistics have them."""
    with connection.cursor() as cursor:
        # This backend's pending counts are flushed at its next report, which a finished
        # transaction with nothing pending after the flush makes.
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT 1")
        cursor.execute("SET stats_fetch_consistency = none")
        cursor.execute(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = ANY(%s)", [list(tables)]
        )
        return {name: (updates, hot) for name, updates, hot in cursor.fetchall()}


def sync_every_station(timestamp: int) -> None:
    for station in range(STATIONS):
        banks = {slot: (f"{60000000 + station * 100 + slot}", 40 + slot) for slot in range(1, SLOTS + 1, 2)}
        body = compact(full_payload(f"86460107{station:07d}", banks=banks, total_slots=SLOTS, timestamp=timestamp))
        answer = deliver(body=body, source_ip=None)
        assert answer.status == 200, answer.body


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
class HotUpdateTests(TransactionTestCase):
    def test_the_rows_a_full_sync_rewrites_are_updated_in_place(self):
        start = now_ts() - 600
        # The first syncs register the stations and insert their slots and banks, filling
        # the tables' pages as a fleet's rows fill them.
        sync_every_station(start)
        before = update_counts()

        for n in range(1, 4):  # each station's rows rewritten three times over
            sync_every_station(start + n)

        after = update_counts()
        for table in TABLES:
            updates = after[table][0] - before[table][0]
            hot = after[table][1] - before[table][1]
            with self.subTest(table=table):
                self.assertGreaterEqual(updates, 3 * STATIONS)
                self.assertEqual(hot, updates, f"{table}: {updates - hot} of {updates} updates were not HOT")

    def test_every_delivery_s_event_row_is_settled_in_place(self):
        start = now_ts() - 600
        sync_every_station(start)
        # Every table the log has (its rows go into today's partition, or the DEFAULT one).
        partitions = [part.name for part in event_partitions.partitions(connection.cursor())]
        before = update_counts(partitions)

        for n in range(1, 5):
            sync_every_station(start + n)

        after = update_counts(partitions)
        updates = sum(after[name][0] - before.get(name, (0, 0))[0] for name in after)
        hot = sum(after[name][1] - before.get(name, (0, 0))[1] for name in after)
        # One settle per delivery, each HOT: no index has a column it changes, and each page
        # keeps room for the settled versions of its rows (event_partitions.FILLFACTOR).
        self.assertEqual(updates, 4 * STATIONS, partitions)
        self.assertEqual(hot, updates, f"{updates - hot} of {updates} settles of event rows were not HOT")
