"""
A body is stored once per digest (docs/design.md, rule 1): its first delivery's row holds
it, and every later delivery of the same bytes, whoever sends it and however often, only
points at that row, with the body's size, the source and the answer it got.
"""

import hashlib
import json
import secrets
from io import StringIO
from unittest import mock

from django.core.management import call_command
from django.db import connection
from django.test import TestCase
from django.urls import reverse

from api.stations.ingest import delivery
from api.stations.models import IoTEvent, IoTEventOutcome, Station
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


def stored_body_bytes(digest: str) -> int:
    """Bytes of body text the event rows of this digest hold, as the database measures them."""
    table = connection.ops.quote_name(IoTEvent._meta.db_table)
    if connection.vendor == "postgresql":
        size = "COALESCE(octet_length(payload::text), 0) + octet_length(raw_body)"
    else:
        size = "COALESCE(length(CAST(payload AS BLOB)), 0) + length(CAST(raw_body AS BLOB))"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT SUM({size}) FROM {table} WHERE body_sha256 = %s", [digest])
        (total,) = cursor.fetchone()
    return total or 0


def big_full_sync(size: int) -> bytes:
    """A full sync of about `size` bytes: real messages are small, extra keys are kept."""
    payload = full_payload(timestamp=now_ts())
    payload["padding"] = ""
    filler = size - len(compact(payload))
    # Random text: what PostgreSQL compresses away would hide what is stored.
    payload["padding"] = secrets.token_hex(filler // 2 + 1)[:filler]
    return compact(payload)


@SIGNED
class BodyStoredOnceTests(TestCase):
    def setUp(self):
        self.sender = SenderClient(make_staff())

    def test_four_replays_of_a_1_mib_body_store_it_once(self):
        body = big_full_sync(1024 * 1024 - 1024)
        digest = hashlib.sha256(body).hexdigest()

        for _ in range(5):
            response = self.sender.post(body, REMOTE_ADDR="192.0.2.10")
            self.assertEqual(response.status_code, 200, response.content[:300])

        stored = stored_body_bytes(digest)
        # Once, give or take how the database writes JSON back as text (jsonb adds spaces).
        self.assertLess(stored, len(body) * 1.05, f"{stored} bytes stored for a body of {len(body)}")
        self.assertGreater(stored, len(body) * 0.95, stored)
        primary, *repeats = IoTEvent.objects.filter(body_sha256=digest).order_by("pk")
        self.assertEqual(len(repeats), 4)
        self.assertEqual(primary.payload["padding"], json.loads(body)["padding"])
        for repeat in repeats:
            self.assertEqual(repeat.duplicate_of_id, primary.pk)
            self.assertIsNone(repeat.payload)
            self.assertEqual(repeat.raw_body, "")
            self.assertEqual(repeat.outcome, IoTEventOutcome.DUPLICATE)
        for event in (primary, *repeats):
            self.assertEqual(event.body_bytes, len(body))
            self.assertEqual(event.source_ip, "192.0.2.10")

    def test_refused_deliveries_are_logged_with_digest_size_source_and_answer(self):
        body = compact(full_payload(timestamp=now_ts()))
        expired = {"HTTP_AUTHORIZATION": "Bearer expired.token.value"}

        refused_first = self.sender.post(body, REMOTE_ADDR="192.0.2.1", **expired)
        accepted = self.sender.post(body, REMOTE_ADDR="192.0.2.2")
        refused_repeat = self.sender.post(body, REMOTE_ADDR="192.0.2.3", **expired)

        self.assertEqual((refused_first.status_code, accepted.status_code), (401, 200))
        self.assertEqual(refused_repeat.status_code, 401)
        first, second, third = IoTEvent.objects.order_by("pk")
        self.assertEqual(first.payload["type"], "full", "the first delivery keeps the body")
        for event, source, answer in (
            (first, "192.0.2.1", accepted),
            (second, "192.0.2.2", accepted),
            (third, "192.0.2.3", refused_repeat),
        ):
            with self.subTest(source=source):
                self.assertEqual(event.body_sha256, hashlib.sha256(body).hexdigest())
                self.assertEqual(event.body_bytes, len(body))
                self.assertEqual(event.source_ip, source)
                self.assertEqual(event.response_data, answer.json())
        self.assertEqual(first.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual((third.outcome, third.http_status), (IoTEventOutcome.DUPLICATE, 401))
        self.assertIn("NOT_AUTHENTICATED", third.error)
        for repeat in (second, third):
            self.assertIsNone(repeat.payload)

    def test_an_undecodable_body_is_kept_as_text_once(self):
        body = b'{"type":"full","timestamp":' + b"\xff" * 10 + b"}"
        for _ in range(3):
            self.assertEqual(self.sender.post(body).status_code, 400)

        primary, *repeats = IoTEvent.objects.order_by("pk")
        self.assertIn('"type":"full"', primary.raw_body)
        self.assertEqual([(r.raw_body, r.payload) for r in repeats], [("", None)] * 2)
        self.assertEqual({event.body_bytes for event in (primary, *repeats)}, {len(body)})

    def test_re_processing_a_repeat_runs_the_first_deliverys_body(self):
        body = compact(status_payload("OFFLINE", timestamp=now_ts()))
        with (
            mock.patch.object(delivery, "apply_message", side_effect=RuntimeError("transient")),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            self.sender.post(body)
            self.sender.post(body)
        repeat = IoTEvent.objects.filter(duplicate_of__isnull=False).get()
        self.assertIsNone(repeat.payload)

        out = StringIO()
        call_command("reprocess_iot_events", "--ids", str(repeat.pk), stdout=out)

        self.assertIn("PROCESSED (HTTP 200)", out.getvalue())
        self.assertEqual(Station.objects.get().status, "OFFLINE")


class RepeatDetailAdminTests(TestCase):
    def test_the_detail_of_a_repeat_shows_the_first_deliverys_body(self):
        self.client.force_login(make_staff("root@chargeghar.test", is_superuser=True))
        sender = SenderClient(make_staff())
        payload = status_payload("OFFLINE", "864601069941234", timestamp=now_ts())
        sender.post(payload)
        sender.post(payload)
        primary, repeat = IoTEvent.objects.order_by("pk")

        response = self.client.get(reverse("admin:stations_iotevent_change", args=[repeat.pk]))

        self.assertContains(response, "&quot;serial_number&quot;: &quot;864601069941234&quot;")
        self.assertContains(response, f"#{primary.pk}")
        self.assertContains(response, "Size")

    def test_the_detail_of_a_repeat_of_an_undecodable_body_shows_its_text(self):
        self.client.force_login(make_staff("root@chargeghar.test", is_superuser=True))
        sender = SenderClient(make_staff())
        body = b'{"type":"status","note":"kept' + b"\xff" + b'"}'
        sender.post(body)
        sender.post(body)
        repeat = IoTEvent.objects.filter(duplicate_of__isnull=False).get()

        response = self.client.get(reverse("admin:stations_iotevent_change", args=[repeat.pk]))

        self.assertContains(response, "&quot;note&quot;:&quot;kept")


class DropRepeatedBodiesMigrationTests(TestCase):
    """Migration 0005 drops the copies repeats logged before it; first deliveries keep theirs."""

    def test_repeats_lose_their_copy_and_first_deliveries_keep_the_body(self):
        from importlib import import_module

        from django.apps import apps
        from django.utils import timezone

        migration = import_module("api.stations.migrations.0005_iot_event_body_once")

        def event(digest, **fields):
            return IoTEvent.objects.create(received_at=timezone.now(), body_sha256=digest * 64, **fields)

        json_primary = event("a", payload={"type": "status"}, outcome=IoTEventOutcome.PROCESSED)
        json_repeat = event("a", payload={"type": "status"}, duplicate_of=json_primary)
        text_primary = event("b", raw_body="not json", outcome=IoTEventOutcome.REJECTED)
        text_repeat = event("b", raw_body="not json", duplicate_of=text_primary)

        migration.drop_repeated_bodies(apps, None)

        for row in (json_primary, json_repeat, text_primary, text_repeat):
            row.refresh_from_db()
        self.assertEqual(json_primary.payload, {"type": "status"})
        self.assertEqual(text_primary.raw_body, "not json")
        self.assertEqual((json_repeat.payload, json_repeat.raw_body), (None, ""))
        self.assertEqual((text_repeat.payload, text_repeat.raw_body), (None, ""))
        self.assertEqual(IoTEvent.objects.filter(payload__isnull=True, duplicate_of__isnull=False).count(), 2)


class PruneKeepsBodiesWithTheirRepeatsTests(TestCase):
    """A repeat has no body of its own, so it must never outlive the row that has it."""

    def event(self, digest: str, outcome: str, days_old: float, **fields) -> IoTEvent:
        from datetime import timedelta

        from django.utils import timezone

        return logged_event(
            received_at=timezone.now() - timedelta(days=days_old),
            body_sha256=digest * 64,
            outcome=outcome,
            **fields,
        )

    def test_no_repeat_is_left_without_its_first_delivery(self):
        old = self.event("a", IoTEventOutcome.PROCESSED, 40, payload={"type": "status"})
        recent_repeat = self.event("a", IoTEventOutcome.DUPLICATE, 1, duplicate_of=old)
        failed = self.event("b", IoTEventOutcome.FAILED, 40, payload={"type": "full"})
        failed_repeat = self.event("b", IoTEventOutcome.DUPLICATE, 39, duplicate_of=failed)

        call_command("prune_iot_events", "--days", "30", stdout=StringIO())

        remaining = set(IoTEvent.objects.values_list("pk", flat=True))
        self.assertEqual(remaining, {failed.pk, failed_repeat.pk})
        self.assertNotIn(recent_repeat.pk, remaining)
        self.assertEqual(IoTEvent.objects.get(pk=failed_repeat.pk).duplicate_of.payload, {"type": "full"})
