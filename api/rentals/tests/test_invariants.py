"""
Rental and package invariants are enforced by the DATABASE.

Every write here goes through `create()` or `update()`, which skip model validation, so
only a constraint can refuse the bad row. Each test also proves the table is left exactly
as it was.
"""

import itertools
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from api.rentals.models import Rental, RentalPackage, RentalStatus
from api.stations.models import PowerBank
from api.stations.tests.fleet import DatabaseInvariantTestCase

User = get_user_model()

_codes = (f"R{n:07d}" for n in itertools.count(1))


def make_package(**fields):
    defaults = {"name": "1 hour", "duration_minutes": 60, "price": Decimal("50.00")}
    return RentalPackage.objects.create(**{**defaults, **fields})


class RentalInvariantTests(DatabaseInvariantTestCase):
    def setUp(self):
        self.customer = User.objects.create_user(
            username="customer", email="customer@chargeghar.test", password="x"
        )
        self.bank = PowerBank.objects.create(serial_number="40818048")
        self.package = make_package()
        self.started = timezone.now() - timedelta(minutes=30)

    def make_rental(self, **fields):
        defaults = {
            "rental_code": next(_codes),
            "user": self.customer,
            "power_bank": self.bank,
            "package": self.package,
            "status": RentalStatus.ACTIVE,
            "started_at": self.started,
            "due_at": self.started + timedelta(minutes=60),
        }
        return Rental.objects.create(**{**defaults, **fields})

    def completed(self, **fields):
        fields = {
            "status": RentalStatus.COMPLETED,
            "ended_at": self.started + timedelta(minutes=10),
            **fields,
        }
        return self.make_rental(**fields)

    def test_a_power_bank_has_at_most_one_open_rental(self):
        for first, second in [
            (RentalStatus.ACTIVE, RentalStatus.ACTIVE),
            (RentalStatus.ACTIVE, RentalStatus.OVERDUE),
            (RentalStatus.OVERDUE, RentalStatus.ACTIVE),
            (RentalStatus.OVERDUE, RentalStatus.OVERDUE),
            # An ejection under way has taken the bank as well.
            (RentalStatus.PENDING_POPUP, RentalStatus.PENDING_POPUP),
            (RentalStatus.PENDING_POPUP, RentalStatus.ACTIVE),
            (RentalStatus.ACTIVE, RentalStatus.PENDING_POPUP),
        ]:
            with self.subTest(first=first, second=second):
                open_rental = self.make_rental(status=first)

                self.assertRefusedByDatabase(Rental, lambda second=second: self.make_rental(status=second))
                open_rental.delete()

    def test_reopening_a_closed_rental_while_another_is_open_is_refused(self):
        closed = self.completed()
        self.make_rental(status=RentalStatus.ACTIVE)

        self.assertRefusedByDatabase(
            Rental,
            lambda: Rental.objects.filter(pk=closed.pk).update(status=RentalStatus.OVERDUE, ended_at=None),
        )
        closed.refresh_from_db()
        self.assertEqual(closed.status, RentalStatus.COMPLETED)

    def test_a_completed_rental_and_an_active_one_for_the_same_bank_are_fine(self):
        self.completed()
        self.completed()
        self.make_rental(status=RentalStatus.CANCELLED)
        self.make_rental(status=RentalStatus.PENDING)
        self.make_rental(status=RentalStatus.ACTIVE)

        self.assertEqual(Rental.objects.filter(power_bank=self.bank).count(), 5)

    def test_open_rentals_of_different_banks_are_fine(self):
        self.make_rental()
        self.make_rental(power_bank=PowerBank.objects.create(serial_number="40818052"))

        self.assertEqual(Rental.objects.filter(status=RentalStatus.ACTIVE).count(), 2)

    def test_a_rental_cannot_end_before_it_started(self):
        self.assertRefusedByDatabase(
            Rental,
            lambda: self.completed(ended_at=self.started - timedelta(seconds=1)),
        )
        rental = self.make_rental()
        self.assertRefusedByDatabase(
            Rental,
            lambda: Rental.objects.filter(pk=rental.pk).update(
                status=RentalStatus.COMPLETED, ended_at=self.started - timedelta(minutes=1)
            ),
        )
        rental.refresh_from_db()
        self.assertIsNone(rental.ended_at)

    def test_a_rental_may_end_the_moment_it_started(self):
        rental = self.make_rental(status=RentalStatus.COMPLETED, ended_at=self.started)

        self.assertEqual(rental.ended_at, self.started)

    def test_rental_amounts_cannot_be_negative(self):
        for field in ("base_amount", "overdue_amount"):
            with self.subTest(field):
                self.assertRefusedByDatabase(
                    Rental, lambda field=field: self.completed(**{field: Decimal("-0.01")})
                )
        rental = self.completed()
        self.assertRefusedByDatabase(
            Rental, lambda: Rental.objects.filter(pk=rental.pk).update(overdue_amount=Decimal("-5"))
        )
        rental.refresh_from_db()
        self.assertEqual(rental.overdue_amount, Decimal("0"))

    def test_rental_status_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(Rental, lambda: self.make_rental(status="RETURNED"))
        rental = self.make_rental()
        self.assertRefusedByDatabase(
            Rental, lambda: Rental.objects.filter(pk=rental.pk).update(status="active")
        )
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)

    def test_rental_code_is_unique(self):
        self.completed(rental_code="ABCD2345")

        self.assertRefusedByDatabase(Rental, lambda: self.make_rental(rental_code="ABCD2345"))

    def test_return_battery_level_above_100_is_refused(self):
        self.assertRefusedByDatabase(Rental, lambda: self.completed(return_battery_level=101))
        rental = self.completed(return_battery_level=100)
        self.assertRefusedByDatabase(
            Rental, lambda: Rental.objects.filter(pk=rental.pk).update(return_battery_level=-1)
        )
        rental.refresh_from_db()
        self.assertEqual(rental.return_battery_level, 100)


class RentalPackageInvariantTests(DatabaseInvariantTestCase):
    def test_package_duration_must_be_positive(self):
        self.assertRefusedByDatabase(RentalPackage, lambda: make_package(duration_minutes=0))
        package = make_package()
        self.assertRefusedByDatabase(
            RentalPackage, lambda: RentalPackage.objects.filter(pk=package.pk).update(duration_minutes=0)
        )
        package.refresh_from_db()
        self.assertEqual(package.duration_minutes, 60)

    def test_package_price_cannot_be_negative(self):
        self.assertRefusedByDatabase(RentalPackage, lambda: make_package(price=Decimal("-0.01")))

    def test_a_free_one_minute_package_is_fine(self):
        make_package(duration_minutes=1, price=Decimal("0"))

        self.assertEqual(RentalPackage.objects.count(), 1)

    def test_package_late_multiplier_cannot_be_negative(self):
        self.assertRefusedByDatabase(RentalPackage, lambda: make_package(late_multiplier=Decimal("-1")))

    def test_package_payment_model_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(RentalPackage, lambda: make_package(payment_model="CREDIT"))
