"""Station liveness: status messages and the monitor command (docs/design.md, rule 9)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

from django.core.management import call_command
from django.test import TestCase, override_settings
from django.utils import timezone

from api.rentals.models import RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import (
    PowerBank,
    Station,
    StationStatus,
    StationStatusHistory,
    StatusTrigger,
)
from api.stations.services.station_sync_service import StationSyncService
from api.stations.services.status import monitor
from api.stations.tests.factories import full_payload, make_staff, now_ts, status_payload


class StatusMessageTests(TestCase):
    def setUp(self):
        self.service = StationSyncService()
        self.t0 = now_ts() - 3600
        self.service.sync_station_data(full_payload(timestamp=self.t0))

    def test_a_status_message_updates_the_station_and_records_how_long_the_previous_status_lasted(self):
        data = self.service.process_status_event(status_payload("OFFLINE", timestamp=self.t0 + 600))

        station = Station.objects.get()
        self.assertEqual(station.status, StationStatus.OFFLINE)
        self.assertTrue(data["status_changed"])
        row = StationStatusHistory.objects.first()
        self.assertEqual(
            (row.previous_status, row.status, row.seconds_in_previous_status, row.trigger),
            (StationStatus.ONLINE, StationStatus.OFFLINE, 600, StatusTrigger.STATUS_EVENT),
        )

    def test_a_repeated_status_writes_no_new_history_row(self):
        self.service.process_status_event(status_payload("OFFLINE", timestamp=self.t0 + 600))
        rows = StationStatusHistory.objects.count()

        data = self.service.process_status_event(status_payload("OFFLINE", timestamp=self.t0 + 660))

        self.assertFalse(data["status_changed"])
        self.assertEqual(StationStatusHistory.objects.count(), rows)

    def test_an_older_status_than_the_newest_applied_is_stale(self):
        data = self.service.process_status_event(status_payload("OFFLINE", timestamp=self.t0 - 10))

        self.assertFalse(data["applied"])
        self.assertEqual(Station.objects.get().status, StationStatus.ONLINE)
        self.assertEqual(StationStatusHistory.objects.count(), 1)

    def test_maintenance_is_a_status_too(self):
        self.service.process_status_event(status_payload("MAINTENANCE", timestamp=self.t0 + 5))
        self.assertEqual(Station.objects.get().status, StationStatus.MAINTENANCE)

    def test_a_status_for_an_unknown_station_registers_it(self):
        self.service.process_status_event(status_payload("ONLINE", "864601069949999"))

        station = Station.objects.get(serial_number="864601069949999")
        self.assertEqual(station.status, StationStatus.ONLINE)
        self.assertEqual(station.station_name, "Station 9999")
        self.assertIsNotNone(station.last_heartbeat)


@override_settings(IOT_OFFLINE_AFTER_MINUTES=30)
class MonitorTests(TestCase):
    def test_monitor_marks_silent_stations_offline_with_timeout_history(self):
        service = StationSyncService()
        service.sync_station_data(full_payload("SILENT01", timestamp=now_ts() - 31 * 60))
        service.sync_station_data(full_payload("ALIVE001", timestamp=now_ts() - 5 * 60))

        out = StringIO()
        call_command("monitor_stations", stdout=out)

        self.assertEqual(Station.objects.get(serial_number="SILENT01").status, StationStatus.OFFLINE)
        self.assertEqual(Station.objects.get(serial_number="ALIVE001").status, StationStatus.ONLINE)
        row = StationStatusHistory.objects.filter(trigger=StatusTrigger.TIMEOUT).get()
        self.assertEqual((row.station.serial_number, row.previous_status), ("SILENT01", StationStatus.ONLINE))
        self.assertIn("1 station(s) marked OFFLINE: SILENT01", out.getvalue())

        # Running again changes nothing more.
        call_command("monitor_stations", stdout=StringIO())
        self.assertEqual(StationStatusHistory.objects.filter(trigger=StatusTrigger.TIMEOUT).count(), 1)

    def test_monitor_marks_a_station_set_online_but_never_heard_from_offline_after_the_timeout(self):
        # An operator set these ONLINE by hand; no cabinet ever sent a message for them.
        long_ago = timezone.now() - timedelta(minutes=31)
        Station.objects.create(
            serial_number="NEVER001", station_name="never", status=StationStatus.ONLINE, status_changed_at=long_ago
        )
        Station.objects.create(
            serial_number="NEVER002", station_name="just set", status=StationStatus.ONLINE, status_changed_at=timezone.now()
        )

        call_command("monitor_stations", stdout=StringIO())

        self.assertEqual(Station.objects.get(serial_number="NEVER001").status, StationStatus.OFFLINE)
        # Within the timeout of being set ONLINE it is given the same time as a silent cabinet.
        self.assertEqual(Station.objects.get(serial_number="NEVER002").status, StationStatus.ONLINE)

    def test_monitor_marks_rentals_past_due_overdue(self):
        StationSyncService().sync_station_data(full_payload(banks={1: ("40818048", 90)}))
        package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("10"))
        customer = make_staff("c@chargeghar.test", is_staff=False)
        late = RentalService.start_rental(
            user=customer,
            power_bank=PowerBank.objects.get(),
            package=package,
            started_at=datetime.now(tz=UTC) - timedelta(minutes=61),
        )

        result = monitor()

        late.refresh_from_db()
        self.assertEqual(late.status, RentalStatus.OVERDUE)
        self.assertEqual(result.rentals_marked_overdue, 1)

    def test_a_full_sync_brings_a_timed_out_station_back_online(self):
        service = StationSyncService()
        service.sync_station_data(full_payload("SILENT01", timestamp=now_ts() - 40 * 60))
        monitor()
        service.sync_station_data(full_payload("SILENT01"))

        self.assertEqual(Station.objects.get().status, StationStatus.ONLINE)
        self.assertEqual(
            list(StationStatusHistory.objects.order_by("changed_at", "id").values_list("trigger", flat=True)),
            [StatusTrigger.FULL_SYNC, StatusTrigger.TIMEOUT, StatusTrigger.FULL_SYNC],
        )
