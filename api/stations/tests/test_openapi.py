"""The OpenAPI schema validates, documents the contract, and its examples are accepted."""

import time
from io import StringIO

from django.core.management import call_command
from django.test import TestCase, override_settings

from api.stations.models import IoTEvent, IoTEventOutcome, Station
from api.stations.openapi import FULL_EXAMPLE, RETURNED_EXAMPLE, STATUS_EXAMPLE
from api.stations.tests.factories import TEST_SECRET, SenderClient, make_staff


class SchemaTests(TestCase):
    def test_the_schema_passes_drf_spectacular_validation_without_warnings(self):
        out = StringIO()
        call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
        self.assertIn("openapi: 3.1.0", out.getvalue())

    def test_the_schema_documents_the_three_messages_and_the_error_envelope(self):
        schema = self.client.get("/api/schema/?format=json").json()
        operation = schema["paths"]["/api/internal/stations/data"]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        self.assertEqual(set(body["examples"]), {"Full", "Returned", "Status"})
        message = schema["components"]["schemas"]["StationMessage"]
        self.assertEqual(
            set(message["discriminator"]["mapping"]), {"full", "returned", "status"}
        )
        for status_code in ("400", "401", "403", "413", "500", "503"):
            response = operation["responses"][status_code]["content"]["application/json"]
            self.assertEqual(response["schema"]["$ref"], "#/components/schemas/ErrorEnvelope")
        headers = {parameter["name"] for parameter in operation["parameters"]}
        self.assertEqual(headers, {"X-Signature", "X-Timestamp"})
        self.assertIn("/api/admin/login", schema["paths"])

    def test_the_docs_page_works_offline(self):
        page = self.client.get("/api/schema/docs/").content.decode()
        self.assertIn("drf_spectacular_sidecar", page)
        self.assertNotIn("cdn.jsdelivr", page)
        self.assertNotIn("unpkg.com", page)


@override_settings(IOT_SIGNATURE_VERIFICATION=True, IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET)
class DocumentedExamplesTests(TestCase):
    def test_every_documented_example_is_accepted_by_the_endpoint(self):
        client = SenderClient(make_staff())
        base = int(time.time()) - 100
        for offset, example in enumerate((FULL_EXAMPLE, RETURNED_EXAMPLE, STATUS_EXAMPLE)):
            with self.subTest(example["type"]):
                # The examples carry 2025 timestamps; the body's own timestamp only orders
                # device state, so move it to now to keep the sequence meaningful.
                response = client.post(dict(example, timestamp=base + offset))
                self.assertEqual(response.status_code, 200, response.content)
                self.assertTrue(response.json()["success"])
        self.assertEqual(Station.objects.get().serial_number, "864601069946994")
        self.assertEqual(IoTEvent.objects.filter(outcome=IoTEventOutcome.PROCESSED).count(), 3)
