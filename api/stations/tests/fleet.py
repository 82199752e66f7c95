"""Fleet-wide invariants the database must satisfy after any sequence of messages."""

from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.test import TestCase

from api.rentals.models import OPEN_RENTAL_STATUSES, Rental
from api.stations.models import PowerBank, SlotStatus, StationSlot


def invariant_violations() -> list[str]:
    problems = []
    doubled_slots = (
        PowerBank.objects.filter(current_slot__isnull=False)
        .values("current_slot")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    if doubled_slots:
        problems.append(f"slots holding two banks: {list(doubled_slots)}")
    doubled_rentals = (
        Rental.objects.filter(status__in=OPEN_RENTAL_STATUSES)
        .values("power_bank")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    if doubled_rentals:
        problems.append(f"banks with two open rentals: {list(doubled_rentals)}")
    placed = set(
        PowerBank.objects.filter(current_slot__isnull=False).values_list("current_slot", flat=True)
    )
    occupied = set(
        StationSlot.objects.filter(status=SlotStatus.OCCUPIED).values_list("pk", flat=True)
    )
    if occupied - placed:
        problems.append(f"OCCUPIED slots without a bank: {sorted(occupied - placed)}")
    misplaced = PowerBank.objects.filter(current_slot__isnull=False).exclude(
        current_station=F("current_slot__station")
    )
    if misplaced.exists():
        problems.append(f"banks whose slot is at another station: {list(misplaced.values_list('serial_number', flat=True))}")
    return problems


class FleetInvariantsMixin:
    def assertFleetInvariants(self):
        self.assertEqual(invariant_violations(), [])


class DatabaseInvariantTestCase(TestCase):
    def assertRefusedByDatabase(self, model, write):
        """`write()` raises IntegrityError and `model`'s table keeps its row count."""
        count = model.objects.count()
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                write()
        self.assertEqual(model.objects.count(), count)
