"""
The event log and idempotency by body (docs/design.md, rules 1-3), and the operators' commands
that re-process and prune it.

The sender retries the identical body with a new X-Timestamp and signature, so every
replay here is the same bytes signed afresh.
"""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from unittest import mock, skipUnless

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.rentals.models import PaymentModel, Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.rentals.signals import rental_completed
from api.stations.ingest import delivery, event_log
from api.stations.ingest.body import decode
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    Station,
    StationSlot,
    StationStatusHistory,
)
from api.stations.selectors import failed_events_q
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import (
    SIGNED,
    STATION_SERIAL,
    SenderClient,
    compact,
    full_payload,
    logged_event,
    make_staff,
    now_ts,
    return_payload,
    status_payload,
)

OTHER_SERIAL = "864601069940000"
BANK = "40818052"

DB_DOWN = "could not connect to server: Connection refused"


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def spy_on_service():
    """Count the messages applied while letting them through."""
    return mock.patch.object(delivery, "apply_message", side_effect=delivery.apply_message)


def service_failing_first(exc: Exception):
    """Applying a message raises `exc` the first time, then works."""
    original = delivery.apply_message
    calls = []

    def apply_message(message):
        calls.append(message)
        if len(calls) == 1:
            raise exc
        return original(message)

    return mock.patch.object(delivery, "apply_message", apply_message)


def service_failing(exc: Exception):
    return mock.patch.object(delivery, "apply_message", side_effect=exc)


@SIGNED
class EventLogTestCase(TestCase):
    def setUp(self):
        self.staff = make_staff()
        self.sender = SenderClient(self.staff)
        self.now = now_ts()

    def domain_counts(self) -> dict[str, int]:
        return {
            model.__name__: model.objects.count()
            for model in (Station, StationSlot, PowerBank, Rental, StationStatusHistory)
        }

    def post_failing(self, body: bytes, exc: Exception, *, timestamp: int | None = None):
        with service_failing(exc), self.assertLogs("main_app.exceptions", "ERROR"):
            return self.sender.post(body, timestamp=timestamp)


class AcceptedEventTests(EventLogTestCase):
    def test_accepted_full_sync_is_logged_with_everything_an_operator_needs(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        before = timezone.now()

        response = self.sender.post(body, REMOTE_ADDR="192.0.2.10")

        self.assertEqual(response.status_code, 200, response.content)
        event = IoTEvent.objects.get()
        self.assertTrue(before <= event.received_at <= timezone.now())
        self.assertEqual(event.message_type, "full")
        self.assertEqual(event.station_serial, STATION_SERIAL)
        self.assertEqual(event.source_ip, "192.0.2.10")
        self.assertEqual(event.body_sha256, sha256(body))
        self.assertEqual(event.payload, json.loads(body))
        self.assertEqual(event.raw_body, "")
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(event.http_status, 200)
        self.assertEqual(event.response_data, response.json())
        self.assertIsNotNone(event.duration_ms)
        self.assertGreaterEqual(event.duration_ms, 0)
        self.assertIsNotNone(event.processed_at)
        self.assertEqual(event.attempts, 1)
        self.assertEqual(event.error, "")
        self.assertIsNone(event.duplicate_of_id)

    def test_body_digest_is_over_the_raw_bytes_not_the_parsed_json(self):
        # Same JSON value, different bytes: two different bodies, each applied once.
        payload = status_payload("ONLINE", timestamp=self.now)
        spaced = json.dumps(payload).encode()

        self.assertEqual(self.sender.post(compact(payload)).status_code, 200)
        self.assertEqual(self.sender.post(spaced).status_code, 200)

        digests = set(IoTEvent.objects.values_list("body_sha256", flat=True))
        self.assertEqual(digests, {sha256(compact(payload)), sha256(spaced)})
        self.assertFalse(IoTEvent.objects.filter(duplicate_of__isnull=False).exists())


class SettledMeanwhileTests(EventLogTestCase):
    """
    Two deliveries of one body in flight at once: the one that writes the outcome second
    finds it settled, rolls its own changes back and answers what the first answered.
    (The threads version of this race runs on PostgreSQL in test_concurrency.py.)
    """

    def test_the_later_delivery_rolls_back_and_answers_the_first_answer(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        logged = event_log.record(decode(body), source_ip="127.0.0.1")
        first_answer = {
            "success": True,
            "message": "Station data updated successfully",
            "data": {"by": "first"},
        }
        # What the other delivery committed while this one was being processed: this one
        # does not look before applying (a first delivery has nothing to look at), so the
        # state is the same as if the write had landed in the middle.
        IoTEvent.objects.filter(pk=logged.event_id).update(
            outcome=IoTEventOutcome.PROCESSED, http_status=200, response=json.dumps(first_answer)
        )

        with spy_on_service() as service:
            answer = delivery._run(logged, decode(body), started=0.0)

        self.assertEqual(service.call_count, 1)
        self.assertEqual((answer.status, answer.body), (200, first_answer))
        # This delivery's own sync was rolled back with the rest of its transaction.
        self.assertEqual(self.domain_counts(), dict.fromkeys(self.domain_counts(), 0))
        event = IoTEvent.objects.get(pk=logged.event_id)
        self.assertEqual((event.attempts, event.response_data), (0, first_answer))


class SettledIsNeverOverwrittenTests(EventLogTestCase):
    """
    A body's row once PROCESSED or STALE keeps that outcome, whatever a slower delivery of
    the same body answers later: otherwise the body would be applied again.
    """

    def processed_event(self) -> IoTEvent:
        response = self.sender.post(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        self.assertEqual(response.status_code, 200, response.content)
        return IoTEvent.objects.get()

    def test_a_late_failure_answer_does_not_overwrite_processed(self):
        event = self.processed_event()
        answered = event.response

        # A delivery of the same body that failed after the one above committed (it was
        # waiting for the station's lock, then its own processing raised).
        written = event_log.settle(
            event.pk,
            outcome=IoTEventOutcome.FAILED,
            http_status=500,
            response={"success": False, "message": "Unexpected error", "error": "INTERNAL_ERROR"},
            duration_ms=1.0,
            error="Traceback: late failure",
            attempted=True,
        )

        self.assertFalse(written)
        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual((event.http_status, event.response, event.attempts), (200, answered, 1))
        self.assertEqual(event.error, "")

    def test_a_late_failure_of_the_first_delivery_leaves_the_repeat_applied_once(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        first = event_log.record(decode(body), source_ip="127.0.0.1")
        # The repeat (the sender's retry) is applied while the first delivery is still in
        # flight; then the first one fails.
        self.assertEqual(self.sender.post(body).status_code, 200)
        with self.assertLogs("main_app.exceptions", "ERROR"), service_failing(RuntimeError("late")):
            answer = delivery._run(first, decode(body), started=0.0)

        self.assertEqual(answer.status, 500)
        primary = IoTEvent.objects.get(pk=first.event_id)
        self.assertEqual(primary.outcome, IoTEventOutcome.PROCESSED)
        # Re-processing finds nothing to do: the body is not applied a second time.
        with spy_on_service() as service:
            call_command("reprocess_iot_events", "--failed", stdout=StringIO())
        self.assertEqual(service.call_count, 0)
        self.assertEqual(StationStatusHistory.objects.count(), 1)

    def test_a_body_processed_after_a_refused_delivery_drops_the_refusal_text(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        refused = self.sender.post(body, timestamp=self.now - 3, HTTP_AUTHORIZATION="Bearer expired.token.value")
        self.assertEqual(refused.status_code, 401, refused.content)
        event = IoTEvent.objects.get()
        self.assertIn("NOT_AUTHENTICATED", event.error)

        self.assertEqual(self.sender.post(body).status_code, 200)

        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(event.error, "")


class LargeNumberTests(EventLogTestCase):
    """JSON has no integer size limit; the fast JSON encoder stops at 64 bits."""

    def test_integers_beyond_64_bits_in_metadata_are_stored_and_answered(self):
        huge = 2**70
        payload = full_payload(banks={1: (BANK, 90)}, timestamp=self.now)
        payload["slots"][0]["slot_metadata"]["lock_count"] = huge
        payload["power_banks"][0]["hardware_info"]["voltage"] = -huge
        payload["device"]["hardware_info"]["board_id"] = huge
        body = compact(payload)

        first = self.sender.post(body)
        replay = self.sender.post(body)

        self.assertEqual(first.status_code, 200, first.content)
        self.assertEqual(replay.content, first.content)
        self.assertEqual(StationSlot.objects.get(slot_number=1).slot_metadata["lock_count"], huge)
        self.assertEqual(PowerBank.objects.get(serial_number=BANK).hardware_info["voltage"], -huge)
        self.assertEqual(Station.objects.get().hardware_info["board_id"], huge)
        self.assertEqual(IoTEvent.objects.order_by("pk").first().payload, json.loads(body))


class ReplayTests(EventLogTestCase):
    def test_a_replay_of_a_settled_body_locks_nothing_and_is_cheap(self):
        # Replays and the sender's retries are answered from the log before anything is
        # applied: no station lock, no transaction. Applying them first and rolling back (one
        # commit per message, tried in docs/performance.md, "Sixth pass") cost one station's
        # throughput 43% in the soak, where most messages repeat a body.
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 5))
        first = self.sender.post(body, timestamp=self.now - 3)
        self.assertEqual(first.status_code, 200, first.content)

        with CaptureQueriesContext(connection) as queries:
            replay = self.sender.post(body, timestamp=self.now)

        self.assertEqual((replay.status_code, replay.content), (200, first.content))
        statements = [query["sql"] for query in queries.captured_queries]
        self.assertFalse([sql for sql in statements if "FOR UPDATE" in sql or "SAVEPOINT" in sql], statements)
        # The token's user and its permissions (test settings), the row, the stored answer,
        # the row's answer.
        self.assertEqual(len(statements), 6, statements)

    def test_replayed_full_sync_answers_the_original_bytes_and_is_not_applied_twice(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 5))
        with spy_on_service() as service:
            first = self.sender.post(body, timestamp=self.now - 3)
            station = Station.objects.get()
            slots_touched = list(StationSlot.objects.values_list("updated_at", flat=True))
            counts = self.domain_counts()

            replay = self.sender.post(body, timestamp=self.now)

        self.assertEqual(first.status_code, 200, first.content)
        self.assertEqual(replay.status_code, 200, replay.content)
        self.assertEqual(replay.content, first.content)
        self.assertEqual(service.call_count, 1)
        self.assertEqual(self.domain_counts(), counts)
        self.assertEqual(StationStatusHistory.objects.count(), 1)
        station_after = Station.objects.get()
        self.assertEqual(station_after.updated_at, station.updated_at)
        self.assertEqual(list(StationSlot.objects.values_list("updated_at", flat=True)), slots_touched)

        primary, duplicate = IoTEvent.objects.order_by("pk")
        self.assertEqual(primary.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(primary.attempts, 1)
        self.assertEqual(duplicate.outcome, IoTEventOutcome.DUPLICATE)
        self.assertEqual(duplicate.duplicate_of, primary)
        self.assertEqual(duplicate.body_sha256, primary.body_sha256)
        self.assertEqual(duplicate.http_status, 200)
        self.assertEqual(duplicate.response_data, first.json())

    def test_replayed_return_does_not_close_or_charge_the_rental_twice(self):
        started = self.now - 90 * 60
        StationSyncService().sync_station_data(full_payload(banks={2: (BANK, 100)}, timestamp=started - 60))
        package = RentalPackage.objects.create(
            name="One hour",
            duration_minutes=60,
            price=Decimal("100.00"),
            payment_model=PaymentModel.PREPAID,
        )
        customer = make_staff("customer@chargeghar.test", is_staff=False)
        rental = RentalService.start_rental(
            user=customer,
            power_bank=PowerBank.objects.get(serial_number=BANK),
            package=package,
            started_at=at(started),
        )
        completions = []

        def on_completed(rental, offline_return, **kwargs):
            completions.append(rental.rental_code)

        rental_completed.connect(on_completed)
        self.addCleanup(rental_completed.disconnect, on_completed)
        body = compact(
            return_payload(BANK, 3, battery=70, returned_at=at(self.now - 60), timestamp=self.now - 55)
        )

        with self.captureOnCommitCallbacks(execute=True):
            first = self.sender.post(body, timestamp=self.now - 50)
        rental.refresh_from_db()
        closed = {
            field: getattr(rental, field)
            for field in ("status", "ended_at", "base_amount", "overdue_amount", "updated_at")
        }
        counts = self.domain_counts()

        with self.captureOnCommitCallbacks(execute=True):
            replay = self.sender.post(body, timestamp=self.now)

        self.assertEqual(first.status_code, 200, first.content)
        data = first.json()["data"]
        self.assertEqual(data["rental_code"], rental.rental_code)
        self.assertEqual(data["rental_status"], RentalStatus.COMPLETED)
        # Returned 89 minutes into a 60-minute package: 29 late minutes at 100/60 x 2.
        self.assertEqual(data["charges"]["overdue_amount"], "96.67")
        self.assertEqual(replay.status_code, 200, replay.content)
        self.assertEqual(replay.content, first.content)
        rental.refresh_from_db()
        self.assertEqual(
            {field: getattr(rental, field) for field in closed}, closed, "the rental was touched again"
        )
        self.assertEqual(completions, [rental.rental_code])
        self.assertEqual(self.domain_counts(), counts)
        self.assertEqual(
            list(IoTEvent.objects.order_by("pk").values_list("outcome", flat=True)),
            [IoTEventOutcome.PROCESSED, IoTEventOutcome.DUPLICATE],
        )

    def test_body_that_failed_with_a_server_error_is_processed_on_retry(self):
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 5))

        with (
            service_failing_first(OperationalError(DB_DOWN)),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            failed = self.sender.post(body, timestamp=self.now - 3)

            self.assertEqual(failed.status_code, 503, failed.content)
            self.assertFalse(Station.objects.exists())
            primary = IoTEvent.objects.get()
            self.assertEqual(primary.outcome, IoTEventOutcome.FAILED)
            self.assertEqual(primary.http_status, 503)
            # Operators get the traceback; the sender got none of it.
            self.assertIn("Traceback", primary.error)
            self.assertIn(DB_DOWN, primary.error)
            self.assertNotIn("Traceback", failed.content.decode())
            self.assertNotIn("Connection refused", failed.content.decode())
            # Dated as failed, so the admin and `reprocess_iot_events --failed` find it.
            self.assertIsNotNone(primary.failed_at)
            self.assertEqual(list(IoTEvent.objects.filter(failed_events_q())), [primary])

            retried = self.sender.post(body, timestamp=self.now)

        self.assertEqual(retried.status_code, 200, retried.content)
        self.assertTrue(Station.objects.filter(serial_number=STATION_SERIAL).exists())
        self.assertEqual(PowerBank.objects.get().serial_number, BANK)
        primary.refresh_from_db()
        self.assertEqual(primary.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(primary.http_status, 200)
        self.assertEqual(primary.response_data, retried.json())
        self.assertEqual(primary.attempts, 2)
        # When it failed stays on the row; it is no longer one of the failed ones.
        self.assertIsNotNone(primary.failed_at)
        self.assertFalse(IoTEvent.objects.filter(failed_events_q()).exists())
        retry = IoTEvent.objects.exclude(pk=primary.pk).get()
        self.assertEqual(retry.duplicate_of, primary)
        self.assertEqual(retry.outcome, IoTEventOutcome.DUPLICATE)
        self.assertEqual(retry.http_status, 200)

    def test_body_refused_for_an_expired_token_is_applied_when_resent_after_login(self):
        # The sender answers 401 by logging in again and resending the identical body.
        body = compact(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 5))
        refused = self.sender.post(
            body, timestamp=self.now - 3, HTTP_AUTHORIZATION="Bearer expired.token.value"
        )
        self.assertEqual(refused.status_code, 401, refused.content)
        self.assertFalse(Station.objects.exists())

        accepted = self.sender.post(body, timestamp=self.now)

        self.assertEqual(accepted.status_code, 200, accepted.content)
        self.assertEqual(Station.objects.get().serial_number, STATION_SERIAL)
        primary, resent = IoTEvent.objects.order_by("pk")
        self.assertEqual(primary.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(primary.http_status, 200)
        self.assertEqual(resent.duplicate_of, primary)
        self.assertEqual(resent.outcome, IoTEventOutcome.DUPLICATE)

    def test_repeat_of_a_failed_body_that_fails_again_stays_failed(self):
        body = compact(status_payload("ONLINE", timestamp=self.now))

        self.post_failing(body, RuntimeError("first"), timestamp=self.now - 1)
        first_failure = IoTEvent.objects.get().failed_at
        again = self.post_failing(body, RuntimeError("second"), timestamp=self.now)

        self.assertEqual(again.status_code, 500)
        primary = IoTEvent.objects.get(duplicate_of__isnull=True)
        self.assertEqual(primary.failed_at, first_failure, "the first failure's time is kept")
        self.assertEqual(primary.outcome, IoTEventOutcome.FAILED)
        self.assertEqual(primary.attempts, 2)
        self.assertIn("second", primary.error)
        self.assertEqual(IoTEvent.objects.get(duplicate_of=primary).http_status, 500)


class StaleMessageTests(EventLogTestCase):
    def test_full_sync_older_than_the_applied_state_is_recorded_but_not_applied(self):
        self.sender.post(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 10))
        counts = self.domain_counts()
        slot_before = StationSlot.objects.get(slot_number=1)
        older = full_payload(banks={1: (BANK, 20), 2: ("40818053", 30)}, timestamp=self.now - 70)

        response = self.sender.post(older)

        self.assertEqual(response.status_code, 200, response.content)
        self.assertIs(response.json()["success"], True)
        self.assertIs(response.json()["data"]["applied"], False)
        self.assertEqual(self.domain_counts(), counts)
        slot_after = StationSlot.objects.get(slot_number=1)
        self.assertEqual(slot_after.battery_level, 90)
        self.assertEqual(slot_after.updated_at, slot_before.updated_at)
        self.assertEqual(PowerBank.objects.get(serial_number=BANK).battery_level, 90)
        event = IoTEvent.objects.order_by("pk").last()
        self.assertEqual(event.outcome, IoTEventOutcome.STALE)
        self.assertEqual(event.http_status, 200)
        self.assertEqual(event.response_data, response.json())

    def test_replayed_stale_body_is_answered_alike_and_stays_unapplied(self):
        self.sender.post(full_payload(timestamp=self.now - 10))
        stale = compact(full_payload(banks={1: (BANK, 20)}, timestamp=self.now - 70))

        first = self.sender.post(stale, timestamp=self.now - 1)
        replay = self.sender.post(stale, timestamp=self.now)

        self.assertEqual(replay.content, first.content)
        self.assertFalse(PowerBank.objects.exists())
        self.assertEqual(
            list(IoTEvent.objects.order_by("pk").values_list("outcome", flat=True)),
            [IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE, IoTEventOutcome.DUPLICATE],
        )


@SIGNED
class RollbackTests(TransactionTestCase):
    """In autocommit, as in production: the log row outlives the rolled-back processing."""

    def test_log_row_survives_when_processing_raises_after_writing(self):
        sender = SenderClient(make_staff())
        body = compact(full_payload(banks={1: (BANK, 90)}))
        # Fails at the very end of a full sync, after station, slots and banks were written.
        crash = RuntimeError("history write exploded")

        with (
            mock.patch("api.stations.services.full_sync.status_change", side_effect=crash),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = sender.post(body)

        self.assertEqual(response.status_code, 500, response.content)
        self.assertEqual(response.json()["error"], "INTERNAL_ERROR")
        self.assertNotIn("exploded", response.content.decode())
        self.assertFalse(Station.objects.exists())
        self.assertFalse(StationSlot.objects.exists())
        self.assertFalse(PowerBank.objects.exists())
        self.assertFalse(StationStatusHistory.objects.exists())
        event = IoTEvent.objects.get()
        self.assertEqual(event.outcome, IoTEventOutcome.FAILED)
        self.assertEqual(event.http_status, 500)
        self.assertEqual(event.body_sha256, sha256(body))
        self.assertEqual(event.payload, json.loads(body))
        self.assertIn("history write exploded", event.error)
        self.assertIn(f"event {event.pk}", response.json()["message"])


class ReprocessCommandTests(EventLogTestCase):
    def reprocess(self, *args) -> list[str]:
        out = StringIO()
        call_command("reprocess_iot_events", *args, stdout=out)
        return out.getvalue().splitlines()

    def failed_event(self, payload: dict) -> IoTEvent:
        response = self.post_failing(compact(payload), RuntimeError("transient"))
        self.assertEqual(response.status_code, 500)
        return IoTEvent.objects.get(body_sha256=sha256(compact(payload)))

    def test_failed_events_are_rerun_with_one_line_each(self):
        first = self.failed_event(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 20))
        second = self.failed_event(full_payload(OTHER_SERIAL, timestamp=self.now - 10))
        self.assertFalse(Station.objects.exists())

        lines = self.reprocess("--failed")

        event_lines = [line for line in lines if line.startswith("event ")]
        self.assertEqual(len(event_lines), 2, lines)
        self.assertTrue(event_lines[0].startswith(f"event {first.pk}: PROCESSED (HTTP 200)"))
        self.assertTrue(event_lines[1].startswith(f"event {second.pk}: PROCESSED (HTTP 200)"))
        self.assertIn("Re-processed 2 event(s)", lines[-1])
        self.assertEqual(
            set(Station.objects.values_list("serial_number", flat=True)),
            {STATION_SERIAL, OTHER_SERIAL},
        )
        self.assertEqual(StationStatusHistory.objects.count(), 2)
        for event in (first, second):
            event.refresh_from_db()
            self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
            # The failure that made it FAILED stays readable for operators.
            self.assertIn("Traceback", event.error)
        self.assertEqual(IoTEvent.objects.count(), 2, "re-processing adds no rows")

    def test_nothing_failed_means_nothing_to_do(self):
        self.assertEqual(self.reprocess("--failed"), ["Nothing to re-process."])

    def test_given_ids_are_rerun_and_others_left_alone(self):
        chosen = self.failed_event(full_payload(timestamp=self.now - 20))
        other = self.failed_event(full_payload(OTHER_SERIAL, timestamp=self.now - 10))

        lines = self.reprocess("--ids", str(chosen.pk))

        self.assertEqual(len([line for line in lines if line.startswith("event ")]), 1, lines)
        self.assertTrue(lines[0].startswith(f"event {chosen.pk}: PROCESSED"))
        chosen.refresh_from_db()
        other.refresh_from_db()
        self.assertEqual(chosen.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(other.outcome, IoTEventOutcome.FAILED)
        self.assertEqual(list(Station.objects.values_list("serial_number", flat=True)), [STATION_SERIAL])

    def test_unknown_ids_raise_command_error(self):
        known = self.failed_event(full_payload(timestamp=self.now))

        with self.assertRaisesMessage(CommandError, "No such event: 999998, 999999"):
            self.reprocess("--ids", str(known.pk), "999999", "999998")

        known.refresh_from_db()
        self.assertEqual(known.outcome, IoTEventOutcome.FAILED, "nothing ran")

    def test_already_processed_event_is_reported_and_not_applied_again(self):
        response = self.sender.post(full_payload(banks={1: (BANK, 90)}, timestamp=self.now))
        event = IoTEvent.objects.get()
        station = Station.objects.get()
        counts = self.domain_counts()

        with spy_on_service() as service:
            lines = self.reprocess("--ids", str(event.pk))

        self.assertTrue(lines[0].startswith(f"event {event.pk}: PROCESSED (HTTP 200)"), lines)
        self.assertIn("already processed; not applied again", lines[0])
        self.assertEqual(service.call_count, 0)
        self.assertEqual(self.domain_counts(), counts)
        self.assertEqual(Station.objects.get().updated_at, station.updated_at)
        event.refresh_from_db()
        self.assertEqual(event.attempts, 1)
        self.assertEqual(event.response_data, response.json())


class PruneCommandTests(TestCase):
    def event(self, name: str, outcome: str, days_old: float, **fields) -> IoTEvent:
        return logged_event(
            received_at=timezone.now() - timedelta(days=days_old),
            message_type="status",
            body_sha256=sha256(name.encode()),
            outcome=outcome,
            **fields,
        )

    def prune(self, *args) -> str:
        out = StringIO()
        call_command("prune_iot_events", *args, stdout=out)
        return out.getvalue()

    def test_old_settled_events_are_deleted_and_failed_and_recent_ones_kept(self):
        old_processed = self.event("old processed", IoTEventOutcome.PROCESSED, 40)
        old_processed_retry = self.event(
            "old processed", IoTEventOutcome.DUPLICATE, 39, duplicate_of=old_processed
        )
        old_rejected = self.event("old rejected", IoTEventOutcome.REJECTED, 40)
        old_failed = self.event("old failed", IoTEventOutcome.FAILED, 40)
        old_failed_retry = self.event("old failed", IoTEventOutcome.DUPLICATE, 39, duplicate_of=old_failed)
        recent_processed = self.event("recent processed", IoTEventOutcome.PROCESSED, 29)

        output = self.prune("--days", "30")

        self.assertIn("Deleted 3 event row(s)", output)
        remaining = set(IoTEvent.objects.values_list("pk", flat=True))
        self.assertEqual(remaining, {old_failed.pk, old_failed_retry.pk, recent_processed.pk})
        for gone in (old_processed, old_processed_retry, old_rejected):
            self.assertNotIn(gone.pk, remaining)

    def test_dry_run_counts_and_deletes_nothing(self):
        self.event("old processed", IoTEventOutcome.PROCESSED, 40)
        self.event("old failed", IoTEventOutcome.FAILED, 40)

        output = self.prune("--days", "30", "--dry-run")

        self.assertIn("Would delete 1 event(s)", output)
        self.assertEqual(IoTEvent.objects.count(), 2)

    def test_negative_days_are_refused(self):
        with self.assertRaises(CommandError):
            self.prune("--days", "-1")


class FailureDateTests(TestCase):
    def test_a_failed_row_without_its_failure_time_is_refused_by_the_database(self):
        # The failures' index is what finds failed rows: one written without `failed_at`
        # (by a writer other than `event_log.settle`) would be invisible to operators.
        for outcome, http_status in ((IoTEventOutcome.FAILED, None), (IoTEventOutcome.DUPLICATE, 503)):
            with self.subTest(outcome=outcome, http_status=http_status), self.assertRaises(IntegrityError):
                with transaction.atomic():
                    IoTEvent.objects.create(
                        received_at=timezone.now(),
                        body_sha256=sha256(outcome.encode()),
                        outcome=outcome,
                        http_status=http_status,
                    )
        IoTEvent.objects.create(
            received_at=timezone.now(),
            body_sha256=sha256(b"ok"),
            outcome=IoTEventOutcome.REJECTED,
            http_status=400,
        )


class EventLogIndexTests(TestCase):
    """
    Every message inserts an event row and updates it once, and each index on the table is
    written by the INSERT (and by the UPDATE too, unless it is a HOT one: test_hot_updates).
    Pinned: the indexes the lookups need and no more, none on a column the UPDATE changes.
    """

    def indexes(self) -> dict[str, dict]:
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, IoTEvent._meta.db_table)
        return {name: info for name, info in constraints.items() if info["index"] or info["primary_key"]}

    def test_no_two_indexes_cover_the_same_columns(self):
        # Before: `db_index=True` on station_serial gave PostgreSQL a second, LIKE-only
        # index on the same column, which no lookup of the project uses.
        columns = sorted(tuple(info["columns"]) for info in self.indexes().values())
        self.assertEqual(len(columns), len(set(columns)), columns)
        # On PostgreSQL the log is partitioned by day: its key includes the partition key,
        # and the digest's unique index is each day's own (test_event_partitions).
        partitioned = connection.vendor == "postgresql"
        self.assertEqual(
            set(columns),
            {
                ("id", "received_at") if partitioned else ("id",),
                ("received_at",),
                ("station_serial",),
                ("failed_at",),
                *([] if partitioned else [("body_sha256",)]),
                ("duplicate_of_id",),
            },
        )

    @skipUnless(connection.vendor == "postgresql", "partial indexes as PostgreSQL reports them")
    def test_the_duplicates_index_leaves_out_first_deliveries(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname = %s",
                [IoTEvent._meta.db_table, "iot_event_duplicate_of_idx"],
            )
            (definition,) = cursor.fetchone()
        self.assertIn("WHERE (duplicate_of_id IS NOT NULL)", definition)

    @skipUnless(connection.vendor == "postgresql", "partial indexes as PostgreSQL reports them")
    def test_the_failures_index_holds_failed_rows_only(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname = %s",
                [IoTEvent._meta.db_table, "iot_event_failed_at_idx"],
            )
            (definition,) = cursor.fetchone()
        self.assertIn("WHERE (failed_at IS NOT NULL)", definition)


class EndpointQueryCountTests(EventLogTestCase):
    """
    A full sync through the endpoint, everything included, for an existing station whose
    banks stay in their slots with new battery levels: the event-log INSERT, the token's
    user and its permissions, its own and its groups' (read on every request under the test
    settings, cached for 10 s otherwise), the station's lock, the banks' lock, then the slots, the banks and the station (one
    statement on PostgreSQL, three elsewhere), and the event's outcome. The same whatever
    the slot count. Inside a TestCase the transaction is a savepoint and shows as two more
    queries (SAVEPOINT, RELEASE); in production it is BEGIN and COMMIT.
    """

    def expected(self) -> int:
        return 10 if connection.vendor == "postgresql" else 12

    def test_a_full_sync_costs_the_same_queries_for_4_24_and_48_slots(self):
        for slots in (4, 24, 48):
            with self.subTest(slots=slots):
                serial = f"86460106990{slots:04d}"
                banks = {n: (f"{slots}{n:06d}", 80) for n in range(1, slots + 1) if n % 4}
                first = full_payload(serial, banks=banks, total_slots=slots, timestamp=self.now - 60)
                self.assertEqual(self.sender.post(compact(first)).status_code, 200)
                again = {n: (bank, 90) for n, (bank, _) in banks.items()}
                body = compact(full_payload(serial, banks=again, total_slots=slots, timestamp=self.now))

                with self.assertNumQueries(self.expected()):
                    response = self.sender.post(body)

                self.assertEqual(response.status_code, 200, response.content)
                event = IoTEvent.objects.get(body_sha256=sha256(body))
                self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
                self.assertEqual(event.response_data, response.json())
                self.assertEqual(event.attempts, 1)
