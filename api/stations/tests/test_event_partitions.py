"""
The event log's partitions by day (PostgreSQL), its upkeep (`maintain_iot_events`) and its
retention by what a row is worth (every database); docs/decisions.md, "The event log is
partitioned by day".

The PostgreSQL tests skip on SQLite, saying why; with REQUIRE_POSTGRES set they cannot skip.
"""

import json
import os
import threading
import time
import unittest
from datetime import UTC, datetime, timedelta
from io import StringIO
from unittest import mock

from django.core.management import call_command
from django.db import close_old_connections, connection, connections, transaction
from django.test import TestCase, TransactionTestCase, override_settings
from django.urls import reverse
from django.utils import timezone

from api.stations.ingest import event_log, event_partitions
from api.stations.ingest.body import decode
from api.stations.ingest.delivery import deliver
from api.stations.models import IoTEvent, IoTEventOutcome, PowerBank
from api.stations.tests.factories import (
    SIGNED,
    SenderClient,
    compact,
    full_payload,
    logged_event,
    make_staff,
    now_ts,
    status_payload,
)
from api.stations.tests.test_event_log import sha256, spy_on_service

ON_POSTGRES = connection.vendor == "postgresql"
SKIP_REASON = "the event log is partitioned on PostgreSQL only (set DATABASE_URL=postgres://...)"
if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:  # CI must never skip these
    raise RuntimeError("REQUIRE_POSTGRES is set but the test database is not PostgreSQL")

TABLE = IoTEvent._meta.db_table


def today():
    return timezone.now().astimezone(UTC).date()


def partition_of(event_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT tableoid::regclass::text FROM "{TABLE}" WHERE id = %s', [event_id])
        return cursor.fetchone()[0]


def partition_names() -> set[str]:
    with connection.cursor() as cursor:
        return {p.name for p in event_partitions.partitions(cursor)}


def maintain(**kwargs) -> str:
    out = StringIO()
    call_command("maintain_iot_events", **kwargs, stdout=out)
    return out.getvalue()


def received_at(moment: datetime):
    """Deliveries logged as received at `moment` (the processing keeps the real clock)."""
    return mock.patch.object(event_log, "timezone", mock.Mock(now=mock.Mock(return_value=moment)))


def event(name: str, days_old: float, *, message_type="full", outcome=IoTEventOutcome.PROCESSED, **fields):
    return logged_event(
        received_at=timezone.now() - timedelta(days=days_old),
        message_type=message_type,
        body_sha256=sha256(name.encode()),
        outcome=outcome,
        payload=fields.pop("payload", {"type": message_type, "name": name}),
        **fields,
    )


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
@SIGNED
class PartitionTests(TestCase):
    def setUp(self):
        self.sender = SenderClient(make_staff())

    def test_the_log_is_partitioned_by_day_with_a_default_and_a_digest_index_per_day(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT partstrat, pg_get_partkeydef(partrelid) FROM pg_partitioned_table "
                "WHERE partrelid = to_regclass(%s)",
                [TABLE],
            )
            self.assertEqual(cursor.fetchone(), ("r", "RANGE (received_at)"))
            cursor.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass(%s) AND NOT EXISTS (SELECT 1 FROM pg_indexes x "
                "WHERE x.tablename = c.relname AND x.indexdef LIKE 'CREATE UNIQUE INDEX %% (body_sha256) "
                "WHERE (duplicate_of_id IS NULL)')",
                [TABLE],
            )
            self.assertEqual(cursor.fetchall(), [], "partitions without their digest index")
        names = partition_names()
        self.assertIn(event_partitions.DEFAULT_PARTITION, names)
        for n in range(8):  # the migration created today and the next 7 days
            self.assertIn(event_partitions.partition_name(today() + timedelta(days=n)), names)

    def test_a_delivery_is_logged_in_its_days_partition(self):
        response = self.sender.post(compact(status_payload("ONLINE", timestamp=now_ts())))
        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(partition_of(IoTEvent.objects.get().pk), event_partitions.partition_name(today()))

    def test_a_delivery_on_a_day_without_partition_is_logged_and_processed_then_moved_into_its_day(self):
        day = today()
        name = event_partitions.partition_name(day)
        with connection.cursor() as cursor:  # the upkeep never ran: no partition for today
            cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}"')
            cursor.execute(f'DROP TABLE "{name}"')
        body = compact(full_payload(banks={1: ("40818052", 90)}, timestamp=now_ts()))

        response = self.sender.post(body)

        self.assertEqual(response.status_code, 200, response.content)
        logged = IoTEvent.objects.get()
        self.assertEqual(logged.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(PowerBank.objects.count(), 1)
        self.assertEqual(partition_of(logged.pk), event_partitions.DEFAULT_PARTITION)

        output = maintain()

        self.assertIn(f"moved 1 row(s) of the default partition into their days ({day})", output)
        self.assertIn(f"created 1 partition(s): {name}", output)
        self.assertEqual(partition_of(logged.pk), name)
        self.assertEqual(IoTEvent.objects.get().payload, logged.payload)
        # Still recognised after the move: the same body again is a repeat.
        with spy_on_service() as applied:
            self.assertEqual(self.sender.post(body).status_code, 200)
        applied.assert_not_called()
        self.assertEqual(IoTEvent.objects.get(duplicate_of__isnull=False).duplicate_of_id, logged.pk)
        self.assertIn("already there, none created", maintain())

    def test_a_body_again_after_midnight_or_days_later_is_a_repeat_applied_once(self):
        midnight = datetime.combine(today() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        body = compact(status_payload("ONLINE", timestamp=now_ts()))
        with spy_on_service() as applied:
            for moment in (
                midnight - timedelta(microseconds=100),
                midnight + timedelta(microseconds=100),
                midnight + timedelta(days=3),
            ):
                with received_at(moment):
                    response = self.sender.post(body)
                self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(applied.call_count, 1)
        first, *repeats = IoTEvent.objects.order_by("id")
        self.assertIsNone(first.duplicate_of_id)
        self.assertEqual([r.duplicate_of_id for r in repeats], [first.pk, first.pk])
        self.assertEqual(
            [partition_of(e.pk) for e in (first, *repeats)],
            [
                event_partitions.partition_name(today()),
                event_partitions.partition_name(today() + timedelta(days=1)),
                event_partitions.partition_name(today() + timedelta(days=4)),
            ],
        )
        self.assertEqual({r.outcome for r in repeats}, {IoTEventOutcome.DUPLICATE})

    @override_settings(IOT_EVENT_REPEAT_DAYS=7)
    def test_a_body_is_a_repeat_within_the_repeat_days_and_new_after_them(self):
        body = compact(status_payload("ONLINE", timestamp=now_ts()))
        first = today() + timedelta(days=1)
        moments = [datetime.combine(first, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1)]
        moments += [moments[0] + timedelta(days=6, hours=22), moments[0] + timedelta(days=7, hours=1)]
        # (the third moment's day holds a newer message, then the body once more)
        with connection.cursor() as cursor:
            for moment in moments:
                event_partitions.create_partition(cursor, moment.date())
        newer = compact(status_payload("ONLINE", timestamp=now_ts() + 1))
        for moment, sent in zip(moments, (body, body, newer), strict=True):
            with received_at(moment):
                self.assertEqual(self.sender.post(sent).status_code, 200)
        with received_at(moments[-1] + timedelta(minutes=1)):
            self.assertEqual(self.sender.post(body).status_code, 200)
        first_row, within, _, after = IoTEvent.objects.order_by("id")
        self.assertIsNone(first_row.duplicate_of_id)
        self.assertEqual(within.duplicate_of_id, first_row.pk)
        # Past the window the body is looked for no more: a first delivery again, in a day of
        # its own, and stale against the station's newer state, so nothing is applied twice.
        self.assertIsNone(after.duplicate_of_id)
        self.assertEqual(after.outcome, IoTEventOutcome.STALE)

    def test_the_digest_lookup_reads_only_the_days_of_the_window(self):
        with connection.cursor() as cursor:
            for n in range(1, 31):
                event_partitions.create_partition(cursor, today() - timedelta(days=n))
            cursor.execute(
                "EXPLAIN (ANALYZE, COSTS OFF, SUMMARY OFF, TIMING OFF) SELECT id FROM stations_iotevent "
                "WHERE body_sha256 = %s AND duplicate_of_id IS NULL AND received_at >= %s",
                ["0" * 64, timezone.now() - timedelta(days=7)],
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
        scanned = {name for name in partition_names() if name in plan}
        # Today, the days ahead, the last 7 days and the DEFAULT partition; not the 23 before.
        self.assertNotIn(event_partitions.partition_name(today() - timedelta(days=8)), scanned)
        self.assertIn(event_partitions.partition_name(today() - timedelta(days=6)), scanned)
        self.assertLessEqual(len(scanned), 8 + 8 + 1)

    def test_logging_a_delivery_is_one_statement_first_or_repeat(self):
        body = decode(compact(status_payload("ONLINE", timestamp=now_ts())))
        for repeat in (False, True):
            with self.subTest(repeat=repeat), self.assertNumQueries(1):
                logged = event_log.record(body, source_ip=None)
            self.assertEqual(logged.is_repeat, repeat)

    def test_the_outcome_is_written_on_the_rows_day_only(self):
        body = decode(compact(status_payload("ONLINE", timestamp=now_ts())))
        logged = event_log.record(body, source_ip=None)
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            self.assertTrue(
                event_log.settle(
                    logged.event_id, outcome=IoTEventOutcome.PROCESSED, http_status=200, response={}, duration_ms=1
                )
            )
        # One statement, on the day's partition itself: not the partitioned table, whose
        # prepared statements lock every day's partition before pruning them.
        (update,) = queries
        self.assertIn(f"UPDATE {event_partitions.partition_name(today())} SET", update["sql"])
        self.assertEqual(IoTEvent.objects.get(pk=logged.event_id).outcome, IoTEventOutcome.PROCESSED)

    def test_a_row_moved_out_of_the_default_partition_meanwhile_is_still_settled(self):
        day = today() + timedelta(days=20)  # no partition yet: the DEFAULT one takes the row
        moment = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=3)
        body = decode(compact(status_payload("ONLINE", timestamp=now_ts())))
        with received_at(moment):
            logged = event_log.record(body, source_ip=None)
        self.assertEqual(logged.event_id.partition, event_partitions.DEFAULT_PARTITION)
        maintain(ahead=25)  # the upkeep creates the day and moves the row into it
        self.assertEqual(partition_of(logged.event_id), event_partitions.partition_name(day))

        self.assertIsNone(event_log.settled_answer(logged.event_id))
        self.assertTrue(
            event_log.settle(
                logged.event_id, outcome=IoTEventOutcome.PROCESSED, http_status=200, response={"ok": 1}, duration_ms=1
            )
        )
        self.assertEqual(event_log.settled_answer(logged.event_id), (200, {"ok": 1}))
        # Settled now: not written again, wherever it is looked for.
        self.assertFalse(
            event_log.settle(logged.event_id, outcome=IoTEventOutcome.FAILED, http_status=500, response={}, duration_ms=1)
        )

    def test_the_upkeep_creates_days_ahead_and_drops_expired_days_whole(self):
        old_day = today() - timedelta(days=100)
        with connection.cursor() as cursor:
            event_partitions.create_partition(cursor, old_day)
        old = event("old", 100, outcome=IoTEventOutcome.FAILED)
        kept = event("kept", 0)
        self.assertEqual(partition_of(old.pk), event_partitions.partition_name(old_day))

        started = time.perf_counter()
        output = maintain(ahead=10)
        elapsed = time.perf_counter() - started

        self.assertLess(elapsed, 1.0, output)
        self.assertIn(
            f"created 3 partition(s): {event_partitions.partition_name(today() + timedelta(days=8))}", output
        )
        self.assertIn(f"dropped expired partition {event_partitions.partition_name(old_day)}", output)
        self.assertIn("1 failed or unfinished", output)
        self.assertEqual(list(IoTEvent.objects.values_list("pk", flat=True)), [kept.pk])
        self.assertNotIn(event_partitions.partition_name(old_day), partition_names())
        self.assertIn(event_partitions.partition_name(today() + timedelta(days=10)), partition_names())
        # Nothing left to do: days there, nothing expired, nothing to trim.
        again = maintain(ahead=10)
        self.assertIn("already there, none created", again)
        self.assertNotIn("dropped", again)

    def test_trimming_rewrites_the_day_once_and_keeps_it_a_working_partition(self):
        day = today() - timedelta(days=10)
        with connection.cursor() as cursor:
            event_partitions.create_partition(cursor, day)
        full = event("full", 10)
        failed = event("failed", 10, outcome=IoTEventOutcome.FAILED)
        returned = event("returned", 10, message_type="returned")

        output = maintain()

        name = event_partitions.partition_name(day)
        self.assertIn(f"trimmed {name}: 3 row(s), 2 keep their payload", output)
        self.assertIsNone(IoTEvent.objects.get(pk=full.pk).payload)
        self.assertEqual(IoTEvent.objects.get(pk=failed.pk).payload, failed.payload)
        with connection.cursor() as cursor:
            (part,) = [p for p in event_partitions.partitions(cursor) if p.name == name]
            self.assertTrue(part.trimmed)
            # The rewritten day has every index the others have, and is a partition again.
            cursor.execute("SELECT COUNT(*) FROM pg_indexes WHERE tablename = %s", [name])
            (indexes,) = cursor.fetchone()
            cursor.execute(
                "SELECT COUNT(*) FROM pg_indexes WHERE tablename = %s",
                [event_partitions.partition_name(today())],
            )
            self.assertEqual(indexes, cursor.fetchone()[0])
        self.assertEqual(partition_of(returned.pk), name)
        self.assertNotIn(f"trimmed {name}", maintain())
        # Its digests are still looked up.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {event_partitions.PRIMARY_FUNCTION}(%s, %s)",
                [sha256(b"failed"), timezone.now() - timedelta(days=30)],
            )
            self.assertEqual(cursor.fetchone()[0], failed.pk)

    def test_large_columns_are_compressed_with_lz4_where_the_server_has_it(self):
        with connection.cursor() as cursor:
            if not event_partitions.lz4_supported(cursor):
                self.skipTest("this PostgreSQL has no lz4")
            cursor.execute(
                "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attname = ANY(%s)",
                [event_partitions.partition_name(today()), list(event_partitions.COMPRESSED_COLUMNS)],
            )
            self.assertEqual(dict(cursor.fetchall()), dict.fromkeys(event_partitions.COMPRESSED_COLUMNS, "l"))
        slots = {n: (f"4081{n:04d}", 80) for n in range(1, 25)}
        body = compact(full_payload(banks=slots, total_slots=24, timestamp=now_ts()))
        self.assertEqual(self.sender.post(body).status_code, 200)
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT pg_column_compression(payload) FROM "{TABLE}"')
            self.assertEqual(cursor.fetchone()[0], "lz4")

    def test_the_size_estimate_sums_the_days(self):
        from api.stations.selectors import event_log_row_estimate

        for n in range(3):
            event(f"e{n}", n)  # today, yesterday (default partition), two days ago
        with connection.cursor() as cursor:
            for part in event_partitions.partitions(cursor):
                cursor.execute(f'ANALYZE "{part.name}"')
        self.assertEqual(event_log_row_estimate(), 3)


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
class MidnightRaceTests(TransactionTestCase):
    def setUp(self):
        close_old_connections()

    def test_two_deliveries_of_one_body_on_either_side_of_midnight_make_one_first_delivery(self):
        midnight = datetime.combine(today() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        body = decode(compact(status_payload("ONLINE", timestamp=now_ts())))
        first_logged, second_started = threading.Event(), threading.Event()
        results = {}

        def before():
            try:
                with transaction.atomic():  # holds its row uncommitted while the other arrives
                    results["before"] = event_log.record(body, source_ip=None)
                    first_logged.set()
                    second_started.wait(10)
                    time.sleep(0.3)
            finally:
                connections.close_all()

        def after():
            try:
                first_logged.wait(10)
                second_started.set()
                with received_at(midnight + timedelta(microseconds=1)):
                    results["after"] = event_log.record(body, source_ip=None)
            finally:
                connections.close_all()

        with received_at(midnight - timedelta(microseconds=1)):
            threads = [threading.Thread(target=before)]
            threads[0].start()
            first_logged.wait(10)
        threads.append(threading.Thread(target=after))
        threads[1].start()
        for thread in threads:
            thread.join(20)

        self.assertFalse(results["before"].is_repeat)
        self.assertTrue(results["after"].is_repeat)
        self.assertEqual(results["after"].primary_id, results["before"].event_id)
        self.assertEqual(IoTEvent.objects.filter(duplicate_of__isnull=True).count(), 1)
        self.assertNotEqual(partition_of(results["before"].event_id), partition_of(results["after"].event_id))


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
class AsynchronousLogCommitTests(TransactionTestCase):
    """The log row's own commit is asynchronous; nothing else's is (event_log.record)."""

    def test_the_row_is_committed_at_once_and_the_setting_ends_with_its_statement(self):
        self.assertEqual(synchronous_commit(), "on")
        logged = event_log.record(decode(compact(status_payload("ONLINE", timestamp=now_ts()))), source_ip=None)

        self.assertEqual(synchronous_commit(), "on")
        seen = {}

        def other_connection():
            try:
                seen["row"] = IoTEvent.objects.filter(pk=logged.event_id).exists()
            finally:
                connections.close_all()

        reader = threading.Thread(target=other_connection)
        reader.start()
        reader.join(10)
        self.assertIs(seen["row"], True)

    def test_inside_a_transaction_the_row_leaves_that_transactions_commit_synchronous(self):
        with transaction.atomic():
            event_log.record(decode(compact(status_payload("ONLINE", timestamp=now_ts()))), source_ip=None)

            self.assertEqual(synchronous_commit(), "on")
        self.assertEqual(IoTEvent.objects.count(), 1)


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
class BodyOutOfRowTests(TestCase):
    """A day's rows keep the body in TOAST and the answer in the row (event_partitions.TOAST_TUPLE_TARGET)."""

    def bodies_out_of_row(self, partition: str) -> int:
        """How many values the partition stores out of its rows."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = to_regclass(%s)", [partition])
            (toast,) = cursor.fetchone()
            cursor.execute(f"SELECT COUNT(DISTINCT chunk_id) FROM {toast}")
            return cursor.fetchone()[0]

    def test_the_outcome_update_does_not_copy_the_body(self):
        banks = {slot: (f"{61000000 + slot}", 50 + slot) for slot in range(1, 25)}
        bodies = [
            compact(full_payload(f"86460108{n:07d}", banks={s: (f"{b}{n}", level) for s, (b, level) in banks.items()},
                                 total_slots=24, timestamp=now_ts()))
            for n in range(5)
        ]
        for body in bodies:
            self.assertEqual(deliver(body=body, source_ip=None).status, 200)

        events = list(IoTEvent.objects.filter(body_sha256__in=[sha256(body) for body in bodies]))
        self.assertEqual({event.outcome for event in events}, {IoTEventOutcome.PROCESSED})
        self.assertEqual(len({partition_of(event.pk) for event in events}), 1)
        # Each body once, out of its row; the digests and the answers stay in the rows.
        self.assertEqual(self.bodies_out_of_row(partition_of(events[0].pk)), len(bodies))
        self.assertEqual([json.loads(event.response)["success"] for event in events], [True] * len(bodies))

    def test_a_new_day_is_created_with_the_same_storage(self):
        day = today() + timedelta(days=30)
        with connection.cursor() as cursor:
            name = event_partitions.create_partition(cursor, day)
            cursor.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", [name])
            self.assertIn(f"toast_tuple_target={event_partitions.TOAST_TUPLE_TARGET}", cursor.fetchone()[0])
            cursor.execute(
                "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = ANY(%s)",
                [name, ["payload", "raw_body", *event_partitions.IN_ROW_COLUMNS]],
            )
            storage = dict(cursor.fetchall())
        self.assertEqual(storage.pop("payload"), "x")
        self.assertEqual(storage.pop("raw_body"), "x")
        self.assertEqual(storage, dict.fromkeys(event_partitions.IN_ROW_COLUMNS, "m"))


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
class UnanalyzedBodyTests(TestCase):
    """ANALYZE skips the bodies, answers and errors of every day (event_partitions.UNANALYZED_COLUMNS)."""

    def targets(self, table: str) -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT attname, attstattarget FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                [table],
            )
            return dict(cursor.fetchall())

    def assert_unanalyzed(self, table: str) -> None:
        targets = self.targets(table)
        self.assertEqual(
            {column: targets.pop(column) for column in event_partitions.UNANALYZED_COLUMNS},
            dict.fromkeys(event_partitions.UNANALYZED_COLUMNS, 0),
            table,
        )
        # Every other column keeps the server's default target (-1).
        self.assertEqual(set(targets.values()), {-1}, table)

    def test_every_partition_new_existing_and_trimmed_skips_them(self):
        day = today() - timedelta(days=10)
        with connection.cursor() as cursor:
            event_partitions.create_partition(cursor, day)
        event("full", 10)
        self.assertIn(f"trimmed {event_partitions.partition_name(day)}", maintain())
        with connection.cursor() as cursor:
            names = [part.name for part in event_partitions.partitions(cursor)]
            new = event_partitions.create_partition(cursor, today() + timedelta(days=40))
        self.assertIn(event_partitions.DEFAULT_PARTITION, names)
        for table in [event_partitions.TABLE, *names, new]:
            self.assert_unanalyzed(table)

    def test_analyze_keeps_statistics_of_the_looked_up_columns_only(self):
        for n in range(3):
            body = compact(full_payload(f"86460109{n:07d}", banks={1: (f"6200000{n}", 50)}, timestamp=now_ts()))
            self.assertEqual(deliver(body=body, source_ip=None).status, 200)
        name = event_partitions.partition_name(today())
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(name)}")
            cursor.execute("SELECT attname FROM pg_stats WHERE tablename = %s", [name])
            analyzed = {row[0] for row in cursor.fetchall()}
        self.assertIn("body_sha256", analyzed)
        self.assertIn("station_serial", analyzed)
        self.assertFalse(analyzed & set(event_partitions.UNANALYZED_COLUMNS), analyzed)


@override_settings(IOT_EVENT_PAYLOAD_DAYS=7, IOT_EVENT_KEEP_DAYS=90)
class RetentionTests(TestCase):
    """The same rules on every database (on PostgreSQL the old rows start in the DEFAULT
    partition, are moved into their days, then trimmed or dropped)."""

    def test_payloads_go_after_payload_days_unless_money_or_trouble_and_rows_after_keep_days(self):
        rows = {
            "full": event("full", 10),
            "status": event("status", 10, message_type="status"),
            "stale": event("stale", 10, outcome=IoTEventOutcome.STALE),
            "returned": event("returned", 10, message_type="returned"),
            "failed": event("failed", 10, outcome=IoTEventOutcome.FAILED),
            "rejected": event("rejected", 10, outcome=IoTEventOutcome.REJECTED),
            "received": event("received", 10, outcome=IoTEventOutcome.RECEIVED),
            "recent": event("recent", 1),
            "returned, 89 days": event("returned, 89 days", 89, message_type="returned"),
            "expired": event("expired", 95, outcome=IoTEventOutcome.FAILED),
        }

        output = maintain()

        remaining = {e.pk: e for e in IoTEvent.objects.all()}
        kept_payload = {name for name, e in rows.items() if e.pk in remaining and remaining[e.pk].payload}
        self.assertEqual(
            kept_payload, {"returned", "failed", "rejected", "received", "recent", "returned, 89 days"}, output
        )
        self.assertNotIn(rows["expired"].pk, remaining)
        # Metadata stays with every kept row.
        trimmed = remaining[rows["full"].pk]
        self.assertEqual(
            (trimmed.message_type, trimmed.body_sha256, trimmed.outcome),
            ("full", sha256(b"full"), IoTEventOutcome.PROCESSED),
        )

    def test_a_kept_failed_event_can_still_be_reprocessed(self):
        body = full_payload(banks={1: ("40818052", 90)}, timestamp=now_ts())
        failed = event("failed", 20, outcome=IoTEventOutcome.FAILED, payload=body)
        maintain()
        out = StringIO()
        call_command("reprocess_iot_events", "--ids", str(failed.pk), stdout=out)
        self.assertIn(f"event {failed.pk}: PROCESSED", out.getvalue())

    def test_payload_days_beyond_keep_days_are_refused(self):
        from django.core.management.base import CommandError

        with self.assertRaises(CommandError):
            maintain(payload_days=100, keep_days=90)


class DroppedFirstDeliveryTests(TestCase):
    """A repeat outlives its first delivery when the first one's day is dropped."""

    def setUp(self):
        self.primary = event("gone", 2)
        self.repeat = event("gone", 1, outcome=IoTEventOutcome.DUPLICATE, payload=None, duplicate_of=self.primary)
        with connection.cursor() as cursor:  # as a dropped partition would, without the ORM
            cursor.execute(f'DELETE FROM "{TABLE}" WHERE id = %s', [self.primary.pk])
        self.client.force_login(make_staff("admin@chargeghar.test", is_superuser=True))

    def test_the_admin_shows_the_repeat(self):
        response = self.client.get(reverse("admin:stations_iotevent_change", args=[self.repeat.pk]))
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "no longer in the log")
        response = self.client.get(reverse("admin:stations_iotevent_changelist"))
        self.assertEqual(response.status_code, 200)

    def test_reprocessing_it_says_why_not(self):
        out = StringIO()
        call_command("reprocess_iot_events", "--ids", str(self.repeat.pk), stdout=out)
        self.assertIn("is no longer in the log", out.getvalue())
        response = self.client.post(
            reverse("admin:stations_iotevent_changelist"),
            {"action": "reprocess_selected", "_selected_action": [self.repeat.pk]},
            follow=True,
        )
        self.assertContains(response, "no longer in the log")
