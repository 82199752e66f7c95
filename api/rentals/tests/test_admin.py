"""Rentals in the operators' admin: read-only records, started only through RentalService."""

from datetime import timedelta
from decimal import Decimal
from unittest import mock

from django.contrib.admin.models import ADDITION, LogEntry
from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from api.rentals.models import PaymentStatus, Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import PowerBank, PowerBankStatus, SlotStatus, Station, StationSlot
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import bank_serial, full_payload, make_staff
from main_app.exceptions import Conflict

STATION_SERIAL = "864601069946994"
ADD_URL = reverse("admin:rentals_rental_add")
CHANGELIST_URL = reverse("admin:rentals_rental_changelist")


class RentalAdminTestCase(TestCase):
    def setUp(self):
        self.superuser = make_staff("root@chargeghar.test", is_superuser=True)
        self.client.force_login(self.superuser)
        self.customer = make_staff("Sita@Example.com", is_staff=False)
        self.package = RentalPackage.objects.create(
            name="1 hour", duration_minutes=60, price=Decimal("100.00")
        )
        self.bank_serial, self.other_serial = bank_serial(), bank_serial()
        StationSyncService().sync_station_data(
            full_payload(
                STATION_SERIAL,
                banks={1: (self.bank_serial, 100), 2: (self.other_serial, 60)},
                total_slots=4,
            )
        )
        self.bank = PowerBank.objects.get(serial_number=self.bank_serial)

    def start(self, bank=None, email="sita@example.com", package=None):
        return self.client.post(
            ADD_URL,
            {
                "customer_email": email,
                "power_bank": (bank or self.bank).pk,
                "package": (package or self.package).pk,
                "_save": "Start rental",
            },
        )


class StartRentalTests(RentalAdminTestCase):
    def test_the_add_page_is_a_start_rental_form(self):
        response = self.client.get(ADD_URL)

        self.assertEqual(response.status_code, 200)
        self.assertEqual(set(response.context["form"].fields), {"customer_email", "power_bank", "package"})
        self.assertContains(response, "Start a rental")
        self.assertContains(response, "admin/js/autocomplete.js")

    def test_starting_a_rental_creates_an_active_rental_through_the_service(self):
        with mock.patch(
            "api.rentals.admin.RentalService.start_rental", wraps=RentalService.start_rental
        ) as start_rental:
            response = self.start()

        rental = Rental.objects.get()
        start_rental.assert_called_once()
        self.assertRedirects(
            response, reverse("admin:rentals_rental_change", args=[rental.pk]), fetch_redirect_response=False
        )
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(
            (rental.user, rental.power_bank, rental.package), (self.customer, self.bank, self.package)
        )
        self.assertEqual(rental.due_at - rental.started_at, timedelta(minutes=60))
        self.assertEqual(rental.station, Station.objects.get())
        self.assertEqual(rental.payment_status, PaymentStatus.PAID)
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.status, PowerBankStatus.RENTED)
        self.assertIsNone(self.bank.current_slot_id)
        self.assertEqual(StationSlot.objects.get(slot_number=1).status, SlotStatus.AVAILABLE)
        self.assertTrue(LogEntry.objects.filter(object_id=str(rental.pk), action_flag=ADDITION).exists())

    def test_success_is_reported_with_the_rental_code(self):
        response = self.client.post(
            ADD_URL,
            {"customer_email": "sita@example.com", "power_bank": self.bank.pk, "package": self.package.pk},
            follow=True,
        )

        rental = Rental.objects.get()
        [message] = list(response.context["messages"])
        self.assertEqual(message.level_tag, "success")
        self.assertIn(f"Rental {rental.rental_code} started", message.message)
        self.assertContains(response, rental.rental_code)

    def test_a_second_attempt_on_the_same_bank_shows_an_error_and_creates_nothing(self):
        self.start()
        self.assertEqual(Rental.objects.count(), 1)

        response = self.start()

        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "errornote")
        self.assertEqual(
            response.context["form"].errors["power_bank"],
            ["This power bank cannot be rented now: it is not AVAILABLE in a slot, or a rental is ejecting it."],
        )
        self.assertEqual(Rental.objects.count(), 1)

    def test_a_conflict_from_the_service_is_shown_as_a_form_error(self):
        # The bank still looks rentable, but someone else's rental took it after the form
        # was checked: the service's check is the one that catches it.
        Rental.objects.create(
            rental_code="RACE0001",
            user=self.superuser,
            power_bank=self.bank,
            package=self.package,
            status=RentalStatus.ACTIVE,
            due_at=timezone.now() + timedelta(hours=1),
        )

        with mock.patch("api.rentals.admin.not_taken", lambda queryset: queryset):
            response = self.start()

        self.assertEqual(response.status_code, 200)
        self.assertContains(response, f"Power bank {self.bank_serial} is already rented.")
        self.assertEqual(Rental.objects.count(), 1)
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.status, PowerBankStatus.AVAILABLE)

    def test_a_bank_whose_ejection_is_under_way_cannot_be_chosen(self):
        Rental.objects.create(
            rental_code="EJECT001",
            user=self.superuser,
            power_bank=self.bank,
            package=self.package,
            status=RentalStatus.PENDING_POPUP,
            due_at=timezone.now() + timedelta(hours=1),
        )

        response = self.start()

        self.assertEqual(
            response.context["form"].errors["power_bank"],
            ["This power bank cannot be rented now: it is not AVAILABLE in a slot, or a rental is ejecting it."],
        )
        self.assertEqual(Rental.objects.count(), 1)

    def test_any_conflict_is_reported_without_a_crash(self):
        with mock.patch(
            "api.rentals.admin.RentalService.start_rental",
            side_effect=Conflict("Power bank 1 is MAINTENANCE, not AVAILABLE."),
        ):
            response = self.start()

        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "Power bank 1 is MAINTENANCE, not AVAILABLE.")
        self.assertEqual(Rental.objects.count(), 0)

    def test_an_unknown_customer_is_a_field_error(self):
        response = self.start(email="nobody@example.com")

        self.assertEqual(response.status_code, 200)
        self.assertIn("customer_email", response.context["form"].errors)
        self.assertEqual(Rental.objects.count(), 0)

    def test_a_bank_that_is_not_in_a_slot_cannot_be_chosen(self):
        PowerBank.objects.filter(pk=self.bank.pk).update(current_slot=None)

        response = self.start()

        self.assertIn("power_bank", response.context["form"].errors)
        self.assertEqual(Rental.objects.count(), 0)

    def test_an_inactive_package_cannot_be_chosen(self):
        RentalPackage.objects.filter(pk=self.package.pk).update(is_active=False)

        response = self.start()

        self.assertIn("package", response.context["form"].errors)

    def test_the_bank_picker_searches_only_rentable_banks_fullest_first(self):
        third = bank_serial()
        StationSyncService().sync_station_data(
            full_payload("864601069946995", banks={3: (third, 90)}, total_slots=4)
        )
        PowerBank.objects.create(serial_number=bank_serial(), status=PowerBankStatus.AVAILABLE)  # no slot
        PowerBank.objects.filter(serial_number=self.other_serial).update(status=PowerBankStatus.MAINTENANCE)
        url = reverse("admin:rentals_rental_bank_autocomplete")
        params = {"app_label": "rentals", "model_name": "rental", "field_name": "power_bank"}

        response = self.client.get(url, {**params, "term": ""})

        self.assertEqual(response.status_code, 200)
        self.assertEqual(
            [item["text"] for item in response.json()["results"]],
            [f"{self.bank_serial} · 100% · Station 6994 slot 1", f"{third} · 90% · Station 6995 slot 3"],
        )
        response = self.client.get(url, {**params, "term": "6995"})
        self.assertEqual(
            [item["id"] for item in response.json()["results"]],
            [str(PowerBank.objects.get(serial_number=third).pk)],
        )

    def test_the_bank_picker_is_for_staff_who_may_see_banks(self):
        self.client.force_login(make_staff("viewer@chargeghar.test"))
        url = reverse("admin:rentals_rental_bank_autocomplete")

        response = self.client.get(
            url, {"app_label": "rentals", "model_name": "rental", "field_name": "power_bank"}
        )

        self.assertEqual(response.status_code, 403)

    def test_the_power_bank_action_opens_the_form_with_the_bank_chosen(self):
        response = self.client.post(
            reverse("admin:stations_powerbank_changelist"),
            {"action": "rent_out", "_selected_action": [self.bank.pk]},
        )

        self.assertRedirects(response, f"{ADD_URL}?power_bank={self.bank.pk}", fetch_redirect_response=False)
        response = self.client.get(response["Location"])
        self.assertEqual(response.context["form"].initial["power_bank"], self.bank.pk)
        self.assertContains(
            response,
            f'<option value="{self.bank.pk}" selected>{self.bank_serial} · 100% · Station 6994 slot 1</option>',
        )

    def test_staff_without_add_permission_cannot_start_rentals(self):
        self.client.force_login(make_staff("viewer@chargeghar.test"))

        self.assertEqual(self.client.get(ADD_URL).status_code, 403)
        self.assertEqual(self.start().status_code, 403)
        self.assertEqual(Rental.objects.count(), 0)


class RentalListTests(RentalAdminTestCase):
    def _rental(self, code, status, *, due_in, email=None, bank=None, **fields):
        user = self.customer if email is None else make_staff(email, is_staff=False)
        bank = bank or PowerBank.objects.create(serial_number=bank_serial(), status=PowerBankStatus.RENTED)
        now = timezone.now()
        return Rental.objects.create(
            rental_code=code,
            user=user,
            power_bank=bank,
            package=self.package,
            status=status,
            started_at=now - timedelta(hours=2),
            due_at=now + timedelta(minutes=due_in),
            **fields,
        )

    def _codes(self, params):
        response = self.client.get(CHANGELIST_URL, params)
        self.assertEqual(response.status_code, 200)
        return sorted(rental.rental_code for rental in response.context["cl"].result_list)

    def test_overdue_filter_counts_active_rentals_past_due(self):
        self._rental("ACTIVE01", RentalStatus.ACTIVE, due_in=30)
        self._rental("LATE0001", RentalStatus.ACTIVE, due_in=-5)
        self._rental("OVERDUE1", RentalStatus.OVERDUE, due_in=-60)
        self._rental("DONE0001", RentalStatus.COMPLETED, due_in=-90, ended_at=timezone.now())

        self.assertEqual(self._codes({"overdue": "yes"}), ["LATE0001", "OVERDUE1"])
        self.assertEqual(self._codes({"overdue": "no"}), ["ACTIVE01", "DONE0001"])
        self.assertEqual(self._codes({"status__exact": "ACTIVE"}), ["ACTIVE01", "LATE0001"])

    def test_search_by_code_customer_email_and_bank_serial(self):
        self._rental("ABCD2345", RentalStatus.ACTIVE, due_in=30)
        self._rental("WXYZ6789", RentalStatus.ACTIVE, due_in=30, email="ram@example.com", bank=self.bank)

        self.assertEqual(self._codes({"q": "abcd2345"}), ["ABCD2345"])
        self.assertEqual(self._codes({"q": "ram@example"}), ["WXYZ6789"])
        self.assertEqual(self._codes({"q": self.bank_serial}), ["WXYZ6789"])

    def test_the_list_shows_charges_and_costs_no_query_per_row(self):
        self._rental(
            "MONEY001",
            RentalStatus.COMPLETED,
            due_in=-30,
            ended_at=timezone.now(),
            base_amount=Decimal("100.00"),
            overdue_amount=Decimal("12.50"),
            is_returned_on_time=False,
        )
        with CaptureQueriesContext(connection) as queries:
            response = self.client.get(CHANGELIST_URL)
        self.assertContains(response, "112.50")
        for n in range(10):
            self._rental(f"MANY{n:04d}", RentalStatus.ACTIVE, due_in=30, email=f"c{n}@example.com")

        with self.assertNumQueries(len(queries)):
            response = self.client.get(CHANGELIST_URL)

        self.assertEqual(len(response.context["cl"].result_list), 11)

    def test_rentals_are_read_only(self):
        rental = self._rental("READ0001", RentalStatus.ACTIVE, due_in=30)
        url = reverse("admin:rentals_rental_change", args=[rental.pk])

        response = self.client.get(url)

        self.assertEqual(response.status_code, 200)
        self.assertNotContains(response, 'name="_save"')
        self.assertContains(response, "READ0001")
        self.assertEqual(self.client.post(url, {"status": "COMPLETED", "base_amount": "0"}).status_code, 403)
        delete_url = reverse("admin:rentals_rental_delete", args=[rental.pk])
        self.assertEqual(self.client.post(delete_url, {"post": "yes"}).status_code, 403)
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)


class RentalPackageAdminTests(RentalAdminTestCase):
    def test_packages_are_editable(self):
        url = reverse("admin:rentals_rentalpackage_change", args=[self.package.pk])

        response = self.client.post(
            url,
            {
                "name": "1 hour",
                "duration_minutes": "60",
                "price": "120.00",
                "payment_model": "PREPAID",
                "late_multiplier": "2",
                "grace_minutes": "5",
                "is_active": "on",
                "_save": "Save",
            },
        )

        self.assertEqual(response.status_code, 302)
        self.package.refresh_from_db()
        self.assertEqual((self.package.price, self.package.grace_minutes), (Decimal("120.00"), 5))
