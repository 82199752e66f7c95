"""
The operators' admin in a real headless Chromium: what an operator clicks, end to end.

The admin's server-side behaviour is pinned in test_admin.py; these tests add what only a
browser shows: the login form, filter links, the styled slot map, the action bar, and the
rental form's search-as-you-type bank picker (select2 calling the autocomplete view).
Each test saves a full-page screenshot to artifacts/screenshots/<test name>.png.
"""

import re
from decimal import Decimal

from api.rentals.models import Rental, RentalPackage, RentalStatus
from api.stations.models import (
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    Station,
    StationStatus,
)
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.browser import BrowserTestCase, expect
from api.stations.tests.factories import bank_serial, full_payload, make_staff, with_faulty_first_slot
from api.stations.tests.test_admin import (
    CHINESE_ERROR,
    failed_status_event,
    station_serial,
    sync_station,
)

PASSWORD = "operator-pass-4821"


def background(locator) -> str:
    return locator.evaluate("element => getComputedStyle(element).backgroundColor")


class AdminInTheBrowserTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        make_staff("operator@chargeghar.test", password=PASSWORD, is_superuser=True)

    def log_in_as_operator(self):
        self.log_in("operator", PASSWORD)

    def station_names_listed(self):
        return self.page.locator("#result_list tbody th.field-station_name")

    def test_an_operator_logs_in_and_sees_the_fleet_dashboard(self):
        sync_station(station_serial(1), banks={1: (bank_serial(), 100), 2: (bank_serial(), 50)})
        sync_station(station_serial(2), banks={1: (bank_serial(), 90)})
        sync_station(station_serial(3), status="OFFLINE")
        failed_status_event(station_serial(1))

        self.log_in_as_operator()

        page = self.page
        expect(page.locator("#user-tools")).to_contain_text("operator")
        for metric, value in (
            ("stations-online", "2"),
            ("stations-offline", "1"),
            ("stations-maintenance", "0"),
            ("power-banks-rentable", "3"),
            ("power-banks-rented", "0"),
            ("rentals-open", "0"),
            ("events-last-hour", "1"),
            ("events-failed-last-hour", "1"),
        ):
            with self.subTest(metric):
                expect(page.locator(f'[data-metric="{metric}"]')).to_have_text(value)
        expect(page.locator("[data-metric=stations-placement-pending]")).to_have_text("3 awaiting placement")
        # stations/admin.css is served and applied: the cards are laid out as a grid.
        expect(page.locator(".cg-cards")).to_have_css("display", "grid")
        expect(page.locator(".cg-card")).to_have_count(4)
        self.screenshot()

    def test_the_station_list_filters_by_status_and_placement_and_finds_a_station_by_imei(self):
        thamel = sync_station(station_serial(1))
        durbar = sync_station(station_serial(2), status="OFFLINE")
        new_road = sync_station(station_serial(3))
        for station, name in ((thamel, "Thamel Chowk"), (durbar, "Durbar Marg"), (new_road, "New Road")):
            Station.objects.filter(pk=station.pk).update(station_name=name)
        Station.objects.filter(pk__in=[thamel.pk, durbar.pk]).update(
            address="Kathmandu", latitude=Decimal("27.7154"), longitude=Decimal("85.3123")
        )
        # Registered by an operator before the cabinet first reports: OFFLINE, not placed.
        Station.objects.create(serial_number="CABINET-7", imei="861234567890123", station_name="Lobby")
        self.log_in_as_operator()
        page = self.page

        page.locator(".model-station").get_by_role("link", name="Stations").click()
        expect(self.station_names_listed()).to_have_text(["Thamel Chowk", "Durbar Marg", "New Road", "Lobby"])

        filters = page.locator("#changelist-filter")
        filters.get_by_role("link", name="Offline", exact=True).click()
        expect(page).to_have_url(re.compile(r"status__exact=OFFLINE"))
        expect(self.station_names_listed()).to_have_text(["Durbar Marg", "Lobby"])
        expect(page.locator("#result_list .cg-badge--bad")).to_have_count(2)
        self.screenshot()

        filters.get_by_role("link", name="Clear all filters").click()
        filters.get_by_role("link", name="Pending (placeholder location)").click()
        expect(page).to_have_url(re.compile(r"\?placement=pending$"))
        expect(self.station_names_listed()).to_have_text(["New Road", "Lobby"])

        filters.get_by_role("link", name="Clear all filters").click()
        page.fill("#searchbar", "861234567890123")
        page.press("#searchbar", "Enter")
        expect(page).to_have_url(re.compile(r"q=861234567890123"))
        expect(self.station_names_listed()).to_have_text(["Lobby"])

    def test_a_station_page_shows_its_slot_map_and_saves_a_new_name(self):
        charged, low, faulty = bank_serial(), bank_serial(), bank_serial()
        payload = full_payload(
            station_serial(1), banks={1: (faulty, 40), 2: (charged, 100), 3: (low, 15)}, total_slots=5
        )
        StationSyncService().sync_station_data(with_faulty_first_slot(payload))
        station = Station.objects.get()
        self.log_in_as_operator()
        page = self.page

        page.goto(self.url("admin:stations_station_changelist"))
        page.locator("#result_list").get_by_role("link", name=station.station_name).click()

        slot_map = page.locator(".cg-slot-map")
        expect(slot_map).to_have_css("display", "grid")
        cells = slot_map.locator(".cg-slot")
        expect(cells).to_have_count(5)
        expect(cells.locator(".cg-slot__number")).to_have_text(["1", "2", "3", "4", "5"])
        for number, state, bank, battery in (
            (1, "error", faulty, "40%"),
            (2, "charged", charged, "100%"),
            (3, "low", low, "15%"),
        ):
            with self.subTest(slot=number):
                cell = cells.nth(number - 1)
                expect(cell).to_have_class(re.compile(rf"\bcg-slot--{state}\b"))
                expect(cell.locator(".cg-slot__bank")).to_have_text(bank)
                expect(cell.locator(".cg-slot__battery")).to_have_text(battery)
        expect(cells.nth(0).locator(".cg-slot__error")).to_have_text(f"0x04 {CHINESE_ERROR}")
        for empty in (cells.nth(3), cells.nth(4)):
            expect(empty).to_have_class(re.compile(r"\bcg-slot--available\b"))
            expect(empty.locator(".cg-slot__bank")).to_have_text("empty")
        # The tones differ, so an operator tells a faulty slot from a charged one at a glance.
        self.assertNotEqual(background(cells.nth(0)), background(cells.nth(1)))
        # The legend's swatches wear the same tones as the slots they explain.
        legend = page.locator(".cg-legend span")
        for swatch, cell in (
            (legend.nth(0), cells.nth(1)),
            (legend.nth(1), cells.nth(2)),
            (legend.nth(3), cells.nth(0)),
        ):
            self.assertEqual(background(swatch), background(cell))
        self.screenshot()
        page.emulate_media(color_scheme="dark")
        self.screenshot(f"{self._testMethodName}--dark")
        page.emulate_media(color_scheme="light")

        page.fill("#id_station_name", "Thamel Chowk")
        page.locator('input[name="_save"]').first.click()

        expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
        expect(self.station_names_listed()).to_have_text(["Thamel Chowk"])
        station.refresh_from_db()
        self.assertEqual(station.station_name, "Thamel Chowk")

    def test_a_failed_event_is_reprocessed_from_the_event_log(self):
        sync_station(station_serial(1))
        event = failed_status_event(station_serial(1))  # a status message saying OFFLINE
        self.log_in_as_operator()
        page = self.page

        page.goto(self.url("admin:stations_iotevent_changelist"))
        row = page.locator("#result_list tbody tr").filter(
            has=page.locator(f'input[name="_selected_action"][value="{event.pk}"]')
        )
        expect(row.locator("td.field-outcome_display")).to_have_text("Failed")
        row.locator('input[name="_selected_action"]').check()
        page.select_option('select[name="action"]', label="Re-process selected")
        page.get_by_role("button", name="Go").click()

        # The admin capitalises the first letter of every message.
        expect(page.locator(".messagelist .success")).to_contain_text(
            f"Event {event.pk}: PROCESSED (HTTP 200)"
        )
        expect(row.locator("td.field-outcome_display")).to_have_text("Processed")
        self.screenshot()
        event.refresh_from_db()
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(Station.objects.get().status, StationStatus.OFFLINE)

    def test_an_operator_starts_a_rental_with_the_bank_picker(self):
        make_staff("sita@example.com", is_staff=False)
        RentalPackage.objects.create(name="1 hour", duration_minutes=60, price=Decimal("100.00"))
        day_pass = RentalPackage.objects.create(
            name="Day pass", duration_minutes=1440, price=Decimal("500.00")
        )
        full, half = bank_serial(), bank_serial()
        sync_station(station_serial(1), banks={1: (full, 100), 2: (half, 60)})
        Station.objects.update(station_name="Thamel Chowk")
        self.log_in_as_operator()
        page = self.page

        page.locator(".model-rental").get_by_role("link", name="Add").click()
        expect(page.locator("h1")).to_have_text("Start a rental")
        page.fill("#id_customer_email", "sita@example.com")
        # The bank picker is the admin's select2 box: it searches as the operator types.
        page.locator(".field-power_bank .select2-selection").click()
        page.locator(".select2-search__field").fill(half[-4:])
        option = page.locator(".select2-results__option", has_text=half)
        expect(option).to_have_text(f"{half} · 60% · Thamel Chowk slot 2")
        option.click()
        expect(page.locator(".field-power_bank .select2-selection__rendered")).to_contain_text(half)
        page.select_option("#id_package", value=str(day_pass.pk))
        page.get_by_role("button", name="Start rental").click()

        expect(page.locator(".messagelist .success")).to_contain_text(
            f"power bank {half} to sita@example.com on Day pass"
        )
        self.screenshot()
        rental = Rental.objects.get()
        self.assertEqual(
            (rental.status, rental.power_bank.serial_number, rental.package),
            (RentalStatus.ACTIVE, half, day_pass),
        )
        bank = PowerBank.objects.get(serial_number=half)
        self.assertEqual((bank.status, bank.current_slot), (PowerBankStatus.RENTED, None))
        self.assertEqual(PowerBank.objects.get(serial_number=full).status, PowerBankStatus.AVAILABLE)
