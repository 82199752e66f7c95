"""
Pushing station data needs `stations.push_station_data` (the "IoT system" group) on a staff
account; superusers have it. Any other staff operator's token gets 403 PERMISSION_DENIED.
"""

import os
from io import StringIO
from unittest import mock

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext

from api.stations.models import IoTEvent, Station
from api.stations.tests.factories import STATION_SERIAL, SenderClient, full_payload, make_staff, now_ts
from api.stations.views.internal_views import IOT_SYSTEM_GROUP, PUSH_STATION_DATA

User = get_user_model()


class PushPermissionTests(TestCase):
    def test_the_migration_creates_the_group_with_the_permission(self):
        group = Group.objects.get(name=IOT_SYSTEM_GROUP)

        self.assertEqual(
            [f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()], [PUSH_STATION_DATA]
        )

    def test_the_sender_in_the_group_may_push(self):
        response = SenderClient(make_staff()).post(full_payload())

        self.assertEqual(response.status_code, 200, response.content)
        self.assertTrue(Station.objects.filter(serial_number=STATION_SERIAL).exists())

    def test_a_superuser_may_push(self):
        root = make_staff("root@chargeghar.test", is_superuser=True, sender=False)

        self.assertEqual(SenderClient(root).post(full_payload()).status_code, 200)

    def test_a_staff_operator_without_the_permission_is_denied(self):
        operator = make_staff("ops@chargeghar.test", sender=False)

        response = SenderClient(operator).post(full_payload())

        self.assertEqual(response.status_code, 403, response.content)
        self.assertEqual(response.json()["error"], "PERMISSION_DENIED")
        self.assertFalse(Station.objects.exists())
        # The refusal is an answer the sender got, so it is in the event log.
        self.assertEqual(IoTEvent.objects.get().http_status, 403)

    def test_the_permission_without_staff_is_not_enough(self):
        customer = make_staff("c@chargeghar.test", is_staff=False)
        customer.groups.add(Group.objects.get(name=IOT_SYSTEM_GROUP))

        self.assertEqual(SenderClient(customer).post(full_payload()).status_code, 403)

    @override_settings(AUTH_USER_CACHE_SECONDS=10)
    def test_with_the_user_cache_the_permissions_are_read_with_the_user_only(self):
        cache.clear()
        self.addCleanup(cache.clear)
        sender = SenderClient(make_staff())
        self.assertEqual(sender.post(full_payload(timestamp=now_ts() - 10)).status_code, 200)

        with CaptureQueriesContext(connection) as queries:
            self.assertEqual(sender.post(full_payload(timestamp=now_ts())).status_code, 200)

        self.assertFalse([q for q in queries.captured_queries if "auth_permission" in q["sql"]])
        self.assertFalse([q for q in queries.captured_queries if 'FROM "users_user"' in q["sql"]])


class CreateIotSenderTests(TestCase):
    def run_command(self, *args, password="a-Sender-pass-9753"):
        out = StringIO()
        with mock.patch.dict(os.environ, {"IOT_SENDER_PASSWORD": password}):
            call_command("create_iot_sender", *args, stdout=out)
        return out.getvalue()

    def test_it_creates_a_staff_account_in_the_group_that_may_push(self):
        output = self.run_command("--email", "iot@chargeghar.example")

        user = User.objects.get(email="iot@chargeghar.example")
        self.assertIn("Created iot@chargeghar.example", output)
        self.assertTrue(user.is_staff)
        self.assertFalse(user.is_superuser)
        self.assertTrue(user.check_password("a-Sender-pass-9753"))
        self.assertEqual(list(user.groups.values_list("name", flat=True)), [IOT_SYSTEM_GROUP])
        self.assertTrue(user.has_perm(PUSH_STATION_DATA))
        self.assertEqual(SenderClient(user).post(full_payload()).status_code, 200)

    def test_it_brings_an_existing_account_into_the_group(self):
        existing = make_staff("iot@chargeghar.example", "old-pass-12345", sender=False, is_staff=False)

        self.run_command("--email", "IOT@chargeghar.example", "--keep-password")

        existing.refresh_from_db()
        self.assertTrue(existing.is_staff)
        self.assertTrue(existing.check_password("old-pass-12345"))
        self.assertTrue(existing.groups.filter(name=IOT_SYSTEM_GROUP).exists())

    def test_a_weak_password_is_refused(self):
        with self.assertRaises(CommandError):
            self.run_command("--email", "iot@chargeghar.example", password="123")
        self.assertFalse(User.objects.exists())
