"""The operators' admin for stations, power banks, status history, the event log and the dashboard."""

import hashlib
import json
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth.models import Permission
from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from api.rentals.models import Rental, RentalPackage, RentalStatus
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    Station,
    StationStatus,
    StationStatusHistory,
    StatusTrigger,
)
from api.stations.selectors import CHARGED_BATTERY_LEVEL
from api.stations.services.station_sync_service import StationSyncService
from api.stations.templatetags.fleet_admin import fleet_summary
from api.stations.tests.factories import SLOT_ERROR_MESSAGE as CHINESE_ERROR
from api.stations.tests.factories import (
    bank_serial,
    compact,
    full_payload,
    logged_event,
    make_staff,
    status_payload,
    with_faulty_first_slot,
)
from main_app.admin_display import age, duration


def station_serial(n: int) -> str:
    return f"8646010{n:08d}"


def sync_station(serial: str, *, banks: dict | None = None, total_slots: int = 4, **kwargs) -> Station:
    StationSyncService().sync_station_data(
        full_payload(serial, banks=banks or {}, total_slots=total_slots, **kwargs)
    )
    return Station.objects.get(serial_number=serial)


def make_superuser():
    return make_staff("root@chargeghar.test", is_superuser=True)


class AdminTestCase(TestCase):
    def setUp(self):
        self.superuser = make_superuser()
        self.client.force_login(self.superuser)


class StationChangelistTests(AdminTestCase):
    url = reverse("admin:stations_station_changelist")

    def _add_stations(self, start: int, stop: int) -> None:
        for n in range(start, stop):
            sync_station(
                station_serial(n),
                banks={1: (bank_serial(), 100), 2: (bank_serial(), 35)},
                total_slots=4,
            )

    def _queries_for_changelist(self) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = self.client.get(self.url)
        self.assertEqual(response.status_code, 200)
        return len(queries)

    def test_the_changelist_costs_the_same_queries_for_10_and_100_stations(self):
        self._add_stations(0, 10)
        queries_for_10 = self._queries_for_changelist()
        self._add_stations(10, 100)

        # session, user, COUNT(*) for the paginator, COUNT(*) for "N total", and one
        # SELECT of the page with the slot counts annotated: nothing per row.
        with self.assertNumQueries(queries_for_10):
            response = self.client.get(self.url)

        self.assertEqual(queries_for_10, 5)
        self.assertEqual(len(response.context["cl"].result_list), 100)
        self.assertContains(response, station_serial(99))

    def test_slots_column_shows_charged_occupied_and_total(self):
        station = sync_station(
            station_serial(1),
            banks={
                1: (bank_serial(), 100),
                2: (bank_serial(), CHARGED_BATTERY_LEVEL),
                3: (bank_serial(), 20),
            },
            total_slots=6,
        )
        empty = sync_station(station_serial(2), total_slots=0)

        response = self.client.get(self.url)

        rows = {row.pk: row for row in response.context["cl"].result_list}
        self.assertEqual(
            (rows[station.pk].slots_charged, rows[station.pk].slots_occupied, rows[station.pk].slots_total),
            (2, 3, 6),
        )
        self.assertEqual(
            (rows[empty.pk].slots_charged, rows[empty.pk].slots_occupied, rows[empty.pk].slots_total),
            (0, 0, 0),
        )
        self.assertContains(response, "2</b>/3/6")
        self.assertContains(response, f"charged (≥{CHARGED_BATTERY_LEVEL}%)")

    def test_slot_total_falls_back_to_the_slot_count(self):
        station = sync_station(station_serial(1), total_slots=5)
        Station.objects.filter(pk=station.pk).update(total_slots=0)

        response = self.client.get(self.url)

        self.assertEqual(response.context["cl"].result_list[0].slots_total, 5)

    def test_heartbeat_shows_its_age_and_is_highlighted_past_the_offline_timeout(self):
        fresh = sync_station(station_serial(1))
        stale = sync_station(station_serial(2))
        Station.objects.filter(pk=fresh.pk).update(last_heartbeat=timezone.now() - timedelta(minutes=3))
        Station.objects.filter(pk=stale.pk).update(last_heartbeat=timezone.now() - timedelta(hours=2))

        response = self.client.get(self.url)

        self.assertContains(response, "3 min ago")
        self.assertContains(response, '<span class="cg-age cg-age--stale"', count=1)
        self.assertContains(response, "2 h ago")

    def test_filter_by_status(self):
        online = sync_station(station_serial(1))
        offline = sync_station(station_serial(2), status="OFFLINE")

        response = self.client.get(self.url, {"status__exact": "OFFLINE"})

        self.assertEqual([s.pk for s in response.context["cl"].result_list], [offline.pk])
        self.assertNotEqual(online.pk, offline.pk)

    def test_filter_by_heartbeat_freshness(self):
        fresh = sync_station(station_serial(1))
        stale = sync_station(station_serial(2))
        never = Station.objects.create(serial_number=station_serial(3), station_name="New")
        Station.objects.filter(pk=stale.pk).update(last_heartbeat=timezone.now() - timedelta(minutes=31))

        for value, expected in (("fresh", fresh), ("stale", stale), ("never", never)):
            with self.subTest(value):
                response = self.client.get(self.url, {"heartbeat": value})
                self.assertEqual([s.pk for s in response.context["cl"].result_list], [expected.pk])

    def test_filter_placement_pending(self):
        pending = sync_station(station_serial(1))
        placed = sync_station(station_serial(2))
        placed.address, placed.latitude, placed.longitude = (
            "Thamel, Kathmandu",
            Decimal("27.7154"),
            Decimal("85.3123"),
        )
        placed.save()
        address_only = sync_station(station_serial(3))
        Station.objects.filter(pk=address_only.pk).update(address="New Road, Kathmandu")

        response = self.client.get(self.url, {"placement": "pending"})
        self.assertEqual({s.pk for s in response.context["cl"].result_list}, {pending.pk, address_only.pk})
        response = self.client.get(self.url, {"placement": "placed"})
        self.assertEqual([s.pk for s in response.context["cl"].result_list], [placed.pk])

    def test_search_by_imei_finds_the_station(self):
        sync_station(station_serial(1))
        registered = Station.objects.create(
            serial_number="CABINET-7", imei="861234567890123", station_name="Lobby"
        )

        response = self.client.get(self.url, {"q": "861234567890123"})

        self.assertEqual([s.pk for s in response.context["cl"].result_list], [registered.pk])

    def test_search_by_name_and_address(self):
        station = sync_station(station_serial(1))
        Station.objects.filter(pk=station.pk).update(station_name="Durbar Marg", address="Kathmandu 44600")
        sync_station(station_serial(2))

        for term in ("durbar", "44600"):
            with self.subTest(term):
                response = self.client.get(self.url, {"q": term})
                self.assertEqual([s.pk for s in response.context["cl"].result_list], [station.pk])


class StationChangePageTests(AdminTestCase):
    def setUp(self):
        super().setUp()
        self.charged_bank, self.low_bank, self.error_bank = bank_serial(), bank_serial(), bank_serial()
        payload = full_payload(
            station_serial(1),
            banks={1: (self.error_bank, 40), 2: (self.charged_bank, 100), 3: (self.low_bank, 15)},
            total_slots=5,
        )
        StationSyncService().sync_station_data(with_faulty_first_slot(payload))
        self.station = Station.objects.get()
        self.url = reverse("admin:stations_station_change", args=[self.station.pk])

    def test_the_change_page_shows_a_slot_map_with_every_slot_its_bank_and_battery(self):
        response = self.client.get(self.url)

        self.assertEqual(response.status_code, 200)
        cells = response.context["slot_cells"]
        self.assertEqual([cell["number"] for cell in cells], [1, 2, 3, 4, 5])
        self.assertEqual(
            [cell["state"] for cell in cells], ["error", "charged", "low", "available", "available"]
        )
        for serial, battery in ((self.error_bank, 40), (self.charged_bank, 100), (self.low_bank, 15)):
            self.assertContains(response, serial)
            self.assertContains(response, f'<div class="cg-slot__battery">{battery}%</div>', html=True)
        self.assertContains(response, 'class="cg-slot cg-slot--charged"')
        self.assertContains(response, 'class="cg-slot cg-slot--error"')

    def test_the_slot_error_message_renders_in_chinese(self):
        response = self.client.get(self.url)

        self.assertEqual(response["Content-Type"], "text/html; charset=utf-8")
        self.assertContains(response, CHINESE_ERROR)
        self.assertContains(response, "0x04")

    def test_operator_fields_are_editable_and_sync_fields_read_only(self):
        response = self.client.get(self.url)
        form = response.context["adminform"].form
        self.assertEqual(set(form.fields), {"station_name", "address", "latitude", "longitude"})

        response = self.client.post(
            self.url,
            {
                "station_name": "Durbar Marg",
                "address": "Durbar Marg, Kathmandu",
                "latitude": "27.712000",
                "longitude": "85.318000",
                "firmware_version": "9.9.9",
                "status": "MAINTENANCE",
                "serial_number": "HIJACKED",
                "_save": "Save",
            },
        )

        self.assertEqual(response.status_code, 302)
        self.station.refresh_from_db()
        self.assertEqual(self.station.station_name, "Durbar Marg")
        self.assertEqual(self.station.latitude, Decimal("27.712000"))
        self.assertEqual(self.station.firmware_version, "2.1.5")
        self.assertEqual(self.station.status, StationStatus.ONLINE)
        self.assertEqual(self.station.serial_number, station_serial(1))

    def test_coordinates_out_of_range_are_a_form_error_not_a_crash(self):
        response = self.client.post(
            self.url,
            {"station_name": "X", "address": "Y", "latitude": "95", "longitude": "85", "_save": "Save"},
        )

        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "Ensure this value is less than or equal to 90.")

    def test_a_later_sync_keeps_what_the_operator_set(self):
        self.client.post(
            self.url,
            {
                "station_name": "Durbar Marg",
                "address": "Kathmandu",
                "latitude": "27.7",
                "longitude": "85.3",
                "_save": "Save",
            },
        )
        sync_station(station_serial(1), timestamp=int(timezone.now().timestamp()) + 1)

        self.station.refresh_from_db()
        self.assertEqual((self.station.station_name, self.station.address), ("Durbar Marg", "Kathmandu"))

    def test_the_change_page_lists_recent_status_changes_and_messages(self):
        StationSyncService().process_status_event(
            status_payload("OFFLINE", station_serial(1), timestamp=int(timezone.now().timestamp()) + 5)
        )
        event = IoTEvent.objects.create(
            received_at=timezone.now(),
            message_type="status",
            station_serial=station_serial(1),
            body_sha256="a" * 64,
            payload={"type": "status"},
            outcome=IoTEventOutcome.PROCESSED,
            http_status=200,
            duration_ms=12.5,
        )
        IoTEvent.objects.create(
            received_at=timezone.now(), station_serial="someone-else", body_sha256="b" * 64
        )

        response = self.client.get(self.url)

        history = response.context["status_history"]
        self.assertEqual([(row["previous"], row["status"]) for row in history][0], ("Online", "Offline"))
        self.assertEqual(history[0]["trigger"], "Status message")
        self.assertEqual([row["event"].pk for row in response.context["recent_events"]], [event.pk])
        self.assertContains(response, reverse("admin:stations_iotevent_change", args=[event.pk]))
        self.assertContains(response, "12.5 ms")

    def test_the_change_page_costs_a_fixed_number_of_queries(self):
        # The slot map, history and messages are one query each, whatever their length.
        with CaptureQueriesContext(connection) as queries:
            self.client.get(self.url)
        for _ in range(2, 20):
            self.station.status_history.create(
                status="ONLINE", changed_at=timezone.now(), trigger=StatusTrigger.FULL_SYNC
            )
        with self.assertNumQueries(len(queries)):
            self.client.get(self.url)

    def test_registering_a_station_by_imei(self):
        response = self.client.post(
            reverse("admin:stations_station_add"),
            {
                "serial_number": "861234567890123",
                "imei": "861234567890123",
                "station_name": "Airport",
                "address": "Tribhuvan International Airport",
                "latitude": "27.6966",
                "longitude": "85.3591",
                "_save": "Save",
            },
        )

        self.assertEqual(response.status_code, 302)
        station = Station.objects.get(serial_number="861234567890123")
        self.assertEqual(station.status, StationStatus.OFFLINE)

    def test_a_serial_with_spaces_is_refused(self):
        response = self.client.post(
            reverse("admin:stations_station_add"),
            {"serial_number": "86 12", "station_name": "X", "address": "", "latitude": "0", "longitude": "0"},
        )

        self.assertEqual(response.status_code, 200)
        self.assertFalse(Station.objects.filter(serial_number="86 12").exists())


class StationDeleteTests(AdminTestCase):
    url = reverse("admin:stations_station_changelist")

    def test_a_superuser_can_delete_a_station_with_its_slots_and_history(self):
        station = sync_station(station_serial(1), banks={1: (bank_serial(), 100)})

        response = self.client.post(self.url, {"action": "delete_selected", "_selected_action": [station.pk]})
        self.assertEqual(response.status_code, 200)
        self.client.post(
            self.url, {"action": "delete_selected", "_selected_action": [station.pk], "post": "yes"}
        )

        self.assertFalse(Station.objects.exists())
        self.assertFalse(StationStatusHistory.objects.exists())
        self.assertIsNone(PowerBank.objects.get().current_station_id)

    def test_an_operator_cannot_delete_a_station_and_its_history(self):
        station = sync_station(station_serial(1))
        operator = make_staff("operator@chargeghar.test")
        operator.user_permissions.set(Permission.objects.filter(content_type__app_label="stations"))
        self.client.force_login(operator)

        response = self.client.post(
            self.url, {"action": "delete_selected", "_selected_action": [station.pk], "post": "yes"}
        )

        self.assertEqual(response.status_code, 403)
        self.assertTrue(Station.objects.exists())


class StationStatusActionTests(AdminTestCase):
    url = reverse("admin:stations_station_changelist")

    def test_put_in_maintenance_writes_history_with_trigger_admin(self):
        station = sync_station(station_serial(1))

        response = self.client.post(
            self.url, {"action": "put_in_maintenance", "_selected_action": [station.pk]}, follow=True
        )

        station.refresh_from_db()
        self.assertEqual(station.status, StationStatus.MAINTENANCE)
        row = StationStatusHistory.objects.filter(station=station).first()
        self.assertEqual(
            (row.previous_status, row.status, row.trigger),
            (StationStatus.ONLINE, StationStatus.MAINTENANCE, StatusTrigger.ADMIN),
        )
        self.assertContains(response, "1 station(s) put in maintenance")

    def test_back_online_sets_online_when_heard_from_recently_else_offline(self):
        recent = sync_station(station_serial(1))
        silent = sync_station(station_serial(2))
        Station.objects.filter(pk=silent.pk).update(last_heartbeat=timezone.now() - timedelta(hours=3))
        self.client.post(
            self.url, {"action": "put_in_maintenance", "_selected_action": [recent.pk, silent.pk]}
        )

        response = self.client.post(
            self.url, {"action": "back_online", "_selected_action": [recent.pk, silent.pk]}, follow=True
        )

        recent.refresh_from_db()
        silent.refresh_from_db()
        self.assertEqual((recent.status, silent.status), (StationStatus.ONLINE, StationStatus.OFFLINE))
        self.assertEqual(StationStatusHistory.objects.filter(trigger=StatusTrigger.ADMIN).count(), 4)
        self.assertContains(response, "1 station(s) back ONLINE; 1 set OFFLINE")

    def test_an_unchanged_status_writes_no_history(self):
        station = sync_station(station_serial(1))
        self.client.post(self.url, {"action": "put_in_maintenance", "_selected_action": [station.pk]})

        response = self.client.post(
            self.url, {"action": "put_in_maintenance", "_selected_action": [station.pk]}, follow=True
        )

        self.assertEqual(StationStatusHistory.objects.filter(trigger=StatusTrigger.ADMIN).count(), 1)
        self.assertContains(response, "1 already were")


class PowerBankAdminTests(AdminTestCase):
    def setUp(self):
        super().setUp()
        self.serial = bank_serial()
        sync_station(station_serial(1), banks={2: (self.serial, 90)})
        self.bank = PowerBank.objects.get(serial_number=self.serial)

    def test_only_model_and_capacity_are_editable(self):
        url = reverse("admin:stations_powerbank_change", args=[self.bank.pk])
        response = self.client.get(url)
        self.assertEqual(set(response.context["adminform"].form.fields), {"model", "capacity_mah"})

        self.client.post(
            url,
            {
                "model": "CG-10",
                "capacity_mah": "10000",
                "status": "DAMAGED",
                "battery_level": "5",
                "_save": "Save",
            },
        )

        self.bank.refresh_from_db()
        self.assertEqual((self.bank.model, self.bank.capacity_mah), ("CG-10", 10000))
        self.assertEqual((self.bank.status, self.bank.battery_level), (PowerBankStatus.AVAILABLE, 90))

    def test_the_list_shows_station_and_slot_without_a_query_per_row(self):
        url = reverse("admin:stations_powerbank_changelist")
        with CaptureQueriesContext(connection) as queries:
            self.client.get(url)
        for n in range(2, 12):
            sync_station(station_serial(n), banks={1: (bank_serial(), 50), 3: (bank_serial(), 95)})

        with self.assertNumQueries(len(queries)):
            response = self.client.get(url)

        self.assertEqual(len(response.context["cl"].result_list), 21)

    def test_filters_and_search(self):
        url = reverse("admin:stations_powerbank_changelist")
        other = bank_serial()
        sync_station(station_serial(2), banks={1: (other, 10)})

        response = self.client.get(url, {"battery": "low"})
        self.assertEqual([b.serial_number for b in response.context["cl"].result_list], [other])
        response = self.client.get(url, {"q": station_serial(1)})
        self.assertEqual([b.serial_number for b in response.context["cl"].result_list], [self.serial])
        response = self.client.get(url, {"rentable": "yes"})
        self.assertEqual(len(response.context["cl"].result_list), 2)


class StatusHistoryAdminTests(AdminTestCase):
    def test_history_is_read_only_and_filterable_by_trigger(self):
        station = sync_station(station_serial(1))
        StationSyncService().process_status_event(
            status_payload("OFFLINE", station_serial(1), timestamp=int(timezone.now().timestamp()) + 5)
        )
        url = reverse("admin:stations_stationstatushistory_changelist")

        response = self.client.get(url, {"trigger__exact": StatusTrigger.STATUS_EVENT})

        self.assertEqual(response.status_code, 200)
        self.assertEqual([row.status for row in response.context["cl"].result_list], ["OFFLINE"])
        row = StationStatusHistory.objects.filter(station=station).first()
        change_url = reverse("admin:stations_stationstatushistory_change", args=[row.pk])
        self.assertEqual(self.client.post(change_url, {"status": "ONLINE"}).status_code, 403)
        self.assertEqual(self.client.get(reverse("admin:stations_stationstatushistory_add")).status_code, 403)


def failed_status_event(serial: str = "864601069946994") -> IoTEvent:
    """A logged status message whose processing failed (as after a database outage)."""
    payload = status_payload("OFFLINE", serial)
    body = compact(payload)
    return logged_event(
        received_at=timezone.now(),
        message_type="status",
        station_serial=serial,
        body_sha256=hashlib.sha256(body).hexdigest(),
        payload=payload,
        outcome=IoTEventOutcome.FAILED,
        http_status=500,
        response=json.dumps(
            {
                "success": False,
                "message": "The server could not process the request.",
                "error": "INTERNAL_ERROR",
            }
        ),
        error="OperationalError: server closed the connection unexpectedly",
        attempts=1,
    )


class IoTEventAdminTests(AdminTestCase):
    changelist = reverse("admin:stations_iotevent_changelist")

    def test_reprocess_action_turns_a_failed_event_processed_and_reports_it(self):
        event = failed_status_event()

        response = self.client.post(
            self.changelist,
            {"action": "reprocess_selected", "_selected_action": [event.pk]},
            follow=True,
        )

        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(event.http_status, 200)
        self.assertEqual(event.response_data["data"]["status"], "OFFLINE")
        self.assertEqual(Station.objects.get().status, StationStatus.OFFLINE)
        [message] = list(response.context["messages"])
        self.assertEqual(message.level_tag, "success")
        self.assertIn(f"event {event.pk}: PROCESSED (HTTP 200)", message.message)

    def test_reprocess_of_an_invalid_body_is_reported_as_a_warning(self):
        event = failed_status_event()
        IoTEvent.objects.filter(pk=event.pk).update(payload={"type": "status", "device": {}})

        response = self.client.post(
            self.changelist,
            {"action": "reprocess_selected", "_selected_action": [event.pk]},
            follow=True,
        )

        [message] = list(response.context["messages"])
        self.assertEqual(message.level_tag, "warning")
        self.assertIn("REJECTED (HTTP 400)", message.message)
        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.REJECTED)

    def test_reprocessing_an_already_processed_body_changes_nothing(self):
        event = failed_status_event()
        self.client.post(
            self.changelist, {"action": "reprocess_selected", "_selected_action": [event.pk]}, follow=True
        )
        rows = StationStatusHistory.objects.count()

        response = self.client.post(
            self.changelist, {"action": "reprocess_selected", "_selected_action": [event.pk]}, follow=True
        )

        self.assertEqual(StationStatusHistory.objects.count(), rows)
        [message] = list(response.context["messages"])
        self.assertIn("PROCESSED", message.message)

    def test_events_cannot_be_added_or_edited(self):
        event = failed_status_event()
        change_url = reverse("admin:stations_iotevent_change", args=[event.pk])

        self.assertEqual(self.client.get(reverse("admin:stations_iotevent_add")).status_code, 403)
        response = self.client.get(change_url)
        self.assertEqual(response.status_code, 200)
        self.assertNotContains(response, 'name="_save"')
        self.assertEqual(response.context["adminform"].form.fields, {})
        self.assertEqual(
            self.client.post(change_url, {"outcome": "PROCESSED", "_save": "Save"}).status_code, 403
        )
        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.FAILED)

    def test_only_superusers_may_delete_events(self):
        event = failed_status_event()
        operator = make_staff("operator@chargeghar.test")
        operator.user_permissions.set(Permission.objects.filter(codename__endswith="_iotevent"))
        self.client.force_login(operator)
        delete_url = reverse("admin:stations_iotevent_delete", args=[event.pk])

        self.assertEqual(self.client.post(delete_url, {"post": "yes"}).status_code, 403)
        response = self.client.get(self.changelist)
        self.assertNotIn("delete_selected", str(response.context["action_form"].fields["action"].choices))
        self.assertIn("reprocess_selected", str(response.context["action_form"].fields["action"].choices))

        self.client.force_login(self.superuser)
        self.assertEqual(self.client.post(delete_url, {"post": "yes"}).status_code, 302)
        self.assertFalse(IoTEvent.objects.filter(pk=event.pk).exists())

    def test_a_viewer_without_change_permission_cannot_reprocess(self):
        event = failed_status_event()
        viewer = make_staff("viewer@chargeghar.test")
        viewer.user_permissions.set(Permission.objects.filter(codename="view_iotevent"))
        self.client.force_login(viewer)

        response = self.client.get(self.changelist)

        self.assertEqual(response.status_code, 200)
        self.assertIsNone(response.context["action_form"])
        self.client.post(self.changelist, {"action": "reprocess_selected", "_selected_action": [event.pk]})
        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.FAILED)

    def test_the_detail_pretty_prints_payload_response_and_error(self):
        payload = full_payload(station_serial(1), banks={1: (bank_serial(), 40)})
        payload["slots"][0]["slot_metadata"]["error_message"] = CHINESE_ERROR
        event = IoTEvent.objects.create(
            received_at=timezone.now(),
            message_type="full",
            station_serial=station_serial(1),
            body_sha256="c" * 64,
            payload=payload,
            outcome=IoTEventOutcome.PROCESSED,
            http_status=200,
            response=json.dumps({"success": True, "message": "ok", "data": {"slots_updated": 4}}),
            error="Traceback <most recent call last>",
        )

        response = self.client.get(reverse("admin:stations_iotevent_change", args=[event.pk]))

        self.assertContains(response, '<pre class="cg-pre">')
        self.assertContains(response, "  &quot;type&quot;: &quot;full&quot;,")
        self.assertContains(response, CHINESE_ERROR)
        self.assertContains(response, "&quot;slots_updated&quot;: 4")
        self.assertContains(response, "Traceback &lt;most recent call last&gt;")

    def test_the_list_filters_by_outcome_and_type_and_searches_by_serial_and_digest(self):
        failed = failed_status_event()
        processed = IoTEvent.objects.create(
            received_at=timezone.now(),
            message_type="full",
            station_serial=station_serial(1),
            body_sha256="d" * 64,
            outcome=IoTEventOutcome.PROCESSED,
            http_status=200,
        )

        def ids(params):
            response = self.client.get(self.changelist, params)
            self.assertEqual(response.status_code, 200)
            return [event.pk for event in response.context["cl"].result_list]

        self.assertEqual(ids({"outcome": "FAILED"}), [failed.pk])
        self.assertEqual(ids({"outcome": "PROCESSED"}), [processed.pk])
        self.assertEqual(ids({"message_type": "full"}), [processed.pk])
        self.assertEqual(ids({"q": station_serial(1)}), [processed.pk])
        self.assertEqual(ids({"q": failed.body_sha256[:12]}), [failed.pk])
        self.assertEqual(ids({"failed": "yes", "within": "1h"}), [failed.pk])


class DashboardTests(AdminTestCase):
    def _fleet(self):
        sync_station(station_serial(1), banks={1: (bank_serial(), 100), 2: (bank_serial(), 50)})
        sync_station(station_serial(2), banks={1: (bank_serial(), 90)})
        sync_station(station_serial(3), status="OFFLINE")
        maintenance = sync_station(station_serial(4), banks={1: (bank_serial(), 90)})
        Station.objects.filter(pk=maintenance.pk).update(status=StationStatus.MAINTENANCE)
        PowerBank.objects.filter(current_station=maintenance).update(status=PowerBankStatus.MAINTENANCE)
        # A bank in nobody's slot is not ready to rent even when AVAILABLE.
        PowerBank.objects.create(serial_number=bank_serial(), status=PowerBankStatus.AVAILABLE)

        package = RentalPackage.objects.create(name="1 hour", duration_minutes=60, price=Decimal("100"))
        now = timezone.now()
        customer = make_staff("customer@example.com", is_staff=False)

        def rental(status, due_in_minutes):
            bank = PowerBank.objects.create(serial_number=bank_serial(), status=PowerBankStatus.RENTED)
            return Rental.objects.create(
                rental_code=bank.serial_number[-8:],
                user=customer,
                power_bank=bank,
                package=package,
                status=status,
                started_at=now - timedelta(hours=3),
                due_at=now + timedelta(minutes=due_in_minutes),
            )

        rental(RentalStatus.ACTIVE, 30)
        rental(RentalStatus.ACTIVE, -5)  # past due, not marked yet
        rental(RentalStatus.OVERDUE, -60)
        rental(RentalStatus.COMPLETED, -120)

        def event(minutes_ago, outcome, http_status):
            return logged_event(
                received_at=now - timedelta(minutes=minutes_ago),
                body_sha256=hashlib.sha256(f"{minutes_ago}{outcome}".encode()).hexdigest(),
                outcome=outcome,
                http_status=http_status,
            )

        event(1, IoTEventOutcome.PROCESSED, 200)
        event(2, IoTEventOutcome.FAILED, 500)
        event(3, IoTEventOutcome.REJECTED, 400)
        event(4, IoTEventOutcome.DUPLICATE, 503)
        event(90, IoTEventOutcome.FAILED, 500)  # older than an hour

    def test_the_summary_counts_a_small_fleet_in_four_queries(self):
        self._fleet()

        with self.assertNumQueries(4):
            summary = fleet_summary()

        self.assertEqual(
            (summary.stations_online, summary.stations_offline, summary.stations_maintenance),
            (2, 1, 1),
        )
        self.assertEqual(summary.power_banks_rentable, 3)
        self.assertEqual(summary.power_banks_rented, 4)
        self.assertEqual((summary.rentals_open, summary.rentals_overdue), (3, 2))
        self.assertEqual((summary.events_last_hour, summary.events_failed_last_hour), (4, 2))
        self.assertEqual(summary.stations_placement_pending, 4)

    def test_the_admin_index_shows_the_dashboard(self):
        self._fleet()

        response = self.client.get(reverse("admin:index"))

        self.assertEqual(response.status_code, 200)
        for metric, value in (
            ("stations-online", 2),
            ("stations-offline", 1),
            ("stations-maintenance", 1),
            ("power-banks-rentable", 3),
            ("rentals-open", 3),
            ("rentals-overdue", 2),
            ("events-last-hour", 4),
            ("events-failed-last-hour", 2),
        ):
            with self.subTest(metric):
                self.assertContains(response, f'<dd data-metric="{metric}">{value}</dd>', html=True)
        self.assertContains(response, "stations/admin.css")
        # The app list is still there.
        self.assertContains(response, reverse("admin:stations_station_changelist"))

    def test_dashboard_links_lead_to_matching_lists(self):
        self._fleet()
        for url, expected in (
            (reverse("admin:rentals_rental_changelist") + "?overdue=yes", 2),
            (reverse("admin:rentals_rental_changelist") + "?status__in=ACTIVE,OVERDUE", 3),
            (reverse("admin:stations_powerbank_changelist") + "?rentable=yes", 3),
            (reverse("admin:stations_iotevent_changelist") + "?within=1h&failed=yes", 2),
        ):
            with self.subTest(url):
                response = self.client.get(url)
                self.assertEqual(response.status_code, 200)
                self.assertEqual(len(response.context["cl"].result_list), expected)

    def test_app_pages_do_not_repeat_the_dashboard(self):
        response = self.client.get(reverse("admin:app_list", args=["stations"]))

        self.assertEqual(response.status_code, 200)
        self.assertNotContains(response, "cg-dashboard")

    def test_staff_without_station_permissions_see_no_dashboard(self):
        self.client.force_login(make_staff("nobody@chargeghar.test"))

        with CaptureQueriesContext(connection) as queries:
            response = self.client.get(reverse("admin:index"))

        self.assertNotContains(response, "cg-dashboard")
        self.assertFalse([q for q in queries.captured_queries if "stations_station" in q["sql"]])


class AllAdminPagesLoadTests(AdminTestCase):
    def test_every_list_add_and_change_page_loads_for_a_superuser(self):
        sync_station(station_serial(1), banks={1: (bank_serial(), 100)})
        StationSyncService().process_status_event(
            status_payload("OFFLINE", station_serial(1), timestamp=int(timezone.now().timestamp()) + 5)
        )
        failed_status_event()
        RentalPackage.objects.create(name="1 hour", duration_minutes=60, price=Decimal("100"))
        from api.rentals.services.rental_service import RentalService

        RentalService.start_rental(
            user=self.superuser, power_bank=PowerBank.objects.get(), package=RentalPackage.objects.get()
        )

        for model in (Station, PowerBank, StationStatusHistory, IoTEvent, Rental, RentalPackage):
            opts = model._meta
            prefix = f"admin:{opts.app_label}_{opts.model_name}"
            obj = model.objects.first()
            with self.subTest(model=opts.model_name):
                self.assertEqual(self.client.get(reverse(f"{prefix}_changelist")).status_code, 200)
                self.assertEqual(self.client.get(reverse(f"{prefix}_change", args=[obj.pk])).status_code, 200)
                self.assertEqual(
                    self.client.get(reverse(f"{prefix}_history", args=[obj.pk])).status_code, 200
                )
        for name in ("stations_station", "stations_powerbank", "rentals_rental", "rentals_rentalpackage"):
            with self.subTest(add=name):
                self.assertEqual(self.client.get(reverse(f"admin:{name}_add")).status_code, 200)
        self.assertEqual(self.client.get(reverse("admin:index")).status_code, 200)
        for app in ("stations", "rentals"):
            self.assertEqual(self.client.get(reverse("admin:app_list", args=[app])).status_code, 200)


class DisplayHelperTests(TestCase):
    def test_age_reads_like_an_operator_speaks(self):
        now = timezone.now()
        self.assertEqual(age(None), "never")
        self.assertEqual(age(now - timedelta(seconds=42), now=now), "42 s ago")
        self.assertEqual(age(now - timedelta(minutes=3, seconds=10), now=now), "3 min ago")
        self.assertEqual(age(now - timedelta(hours=5), now=now), "5 h ago")
        self.assertEqual(age(now - timedelta(days=3), now=now), "3 days ago")

    def test_duration(self):
        self.assertEqual(duration(None), "-")
        self.assertEqual(duration(59), "59 s")
        self.assertEqual(duration(600), "10 min")
        self.assertEqual(duration(3600 * 3 + 60 * 20), "3 h 20 min")
        self.assertEqual(duration(86400 * 2 + 3600 * 4), "2 d 4 h")
