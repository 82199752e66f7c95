"""Starting and closing rentals. Every write to a Rental goes through this module."""

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from api.rentals.models import (
    OPEN_RENTAL_STATUSES,
    PaymentModel,
    PaymentStatus,
    Rental,
    RentalPackage,
    RentalStatus,
)
from api.rentals.services.charges import Charges, compute_charges
from api.rentals.signals import rental_completed
from api.stations.models import PowerBank, PowerBankStatus, Station
from api.stations.services.inventory import take_out_for_rental
from main_app import sql
from main_app.exceptions import Conflict

logger = logging.getLogger(__name__)

_RENTAL_TABLE = sql.quote(Rental._meta.db_table)
_BANK_TABLE = sql.quote(PowerBank._meta.db_table)

# Unambiguous characters only: no 0/O, 1/I/L.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8


def new_rental_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def charges_for(rental: Rental, ended_at: datetime) -> Charges:
    package = rental.package
    if package is None:
        # A rental without a package (imported or created by hand) costs nothing.
        package = RentalPackage(
            duration_minutes=max(1, int((rental.due_at - rental.started_at).total_seconds() // 60)),
            price=0,
        )
    return compute_charges(
        price=package.price,
        duration_minutes=package.duration_minutes,
        payment_model=package.payment_model,
        late_multiplier=package.late_multiplier,
        grace_minutes=package.grace_minutes,
        started_at=rental.started_at,
        due_at=rental.due_at,
        ended_at=ended_at,
    )


def open_rentals_clause(serials: Iterable[str]) -> tuple[str, list]:
    """
    `FROM .. WHERE ..` of the open rentals (aliased `rental`) of the banks with these serials,
    and its parameters: fixed SQL, for the statements a full sync runs on every message.
    """
    serial_match, params = sql.in_values("bank.serial_number", serials)
    status_match, status_params = sql.in_values(
        "rental.status", [status.value for status in OPEN_RENTAL_STATUSES]
    )
    return (
        f"FROM {_RENTAL_TABLE} rental JOIN {_BANK_TABLE} bank ON bank.id = rental.power_bank_id "
        f"WHERE {serial_match} AND {status_match}",
        params + status_params,
    )


def _complete(
    rental: Rental, *, ended_at: datetime, return_station: Station, battery_level: int | None, now: datetime
) -> Charges:
    ended_at = min(max(ended_at, rental.started_at), max(now, rental.started_at))
    charges = charges_for(rental, ended_at)
    rental.status = RentalStatus.COMPLETED
    rental.ended_at = ended_at
    rental.return_station = return_station
    rental.is_returned_on_time = charges.is_on_time
    rental.base_amount = charges.base_amount
    rental.overdue_amount = charges.overdue_amount
    rental.payment_status = charges.payment_status
    rental.return_battery_level = battery_level
    rental.updated_at = now
    return charges


_COMPLETION_FIELDS = [
    "status",
    "ended_at",
    "return_station",
    "is_returned_on_time",
    "base_amount",
    "overdue_amount",
    "payment_status",
    "return_battery_level",
    "updated_at",
]


class RentalService:
    """Rental lifecycle: start, complete on return, mark overdue."""

    @staticmethod
    def open_rentals_for(*, serials: Iterable[str]):
        """
        Open rentals of the banks with these serials, locked in a fixed order, with their
        packages and banks. The caller is in a transaction and holds its station's lock;
        rentals are locked before banks and slots (see api/stations/services/full_sync.py).
        """
        # Usually none is open: lock and find them with one fixed statement (a full sync runs
        # it for every message), and load the rows (with package and bank) only when there
        # are some.
        clause, params = open_rentals_clause(serials)
        locked = [
            pk
            for (pk,) in sql.fetch(
                f"SELECT rental.id {clause} ORDER BY rental.id{sql.for_update('rental')}", params
            )
        ]
        if not locked:
            return []
        return list(
            Rental.objects.select_related("package", "power_bank").filter(pk__in=locked).order_by("pk")
        )

    @staticmethod
    def close_returned(
        returns: list[tuple[Rental, int | None]],
        *,
        ended_at: datetime,
        return_station: Station,
        offline_return: bool,
        now: datetime | None = None,
    ) -> list[Charges]:
        """
        Close each rental as returned at `return_station`, with the battery level its bank
        came back with: end time, on-time flag, charges and payment status, in one UPDATE;
        `rental_completed` is sent for each once the transaction commits.

        The end time is the moment the bank went back, kept between the rental's start and
        `now`. The caller holds the rentals' row locks (`open_rentals_for`).
        """
        now = now or timezone.now()
        charges = [
            _complete(rental, ended_at=ended_at, return_station=return_station, battery_level=battery, now=now)
            for rental, battery in returns
        ]
        rentals = [rental for rental, _ in returns]
        Rental.objects.bulk_update(rentals, _COMPLETION_FIELDS)
        for rental in rentals:
            # send_robust: a failing receiver (payments, notifications) is logged by Django
            # and cannot undo a return that has been committed.
            transaction.on_commit(
                lambda rental=rental: rental_completed.send_robust(
                    sender=Rental, rental=rental, offline_return=offline_return
                )
            )
        return charges

    @staticmethod
    @transaction.atomic
    def start_rental(
        *,
        user,
        power_bank: PowerBank,
        package: RentalPackage,
        started_at: datetime | None = None,
    ) -> Rental:
        """
        Hand `power_bank` to `user` on `package`: the bank leaves its slot and is RENTED.

        Takes the locks in the order every station message does (station, then bank, then
        slot), so it never deadlocks with a full sync or a return at the same station.
        Raises `Conflict` when the bank is already rented or not available.
        """
        for _attempt in range(3):
            station_id = (
                PowerBank.objects.filter(pk=power_bank.pk).values_list("current_station_id", flat=True).get()
            )
            if station_id is not None:
                Station.objects.select_for_update().filter(pk=station_id).first()
            bank = PowerBank.objects.select_for_update().get(pk=power_bank.pk)
            if bank.current_station_id == station_id:
                break  # it did not move while we were taking the station's lock
        else:
            raise Conflict(f"Power bank {bank.serial_number} keeps moving; try again.")
        if bank.status != PowerBankStatus.AVAILABLE:
            raise Conflict(f"Power bank {bank.serial_number} is {bank.status}, not AVAILABLE.")
        if Rental.objects.filter(power_bank=bank, status__in=OPEN_RENTAL_STATUSES).exists():
            raise Conflict(f"Power bank {bank.serial_number} is already rented.")
        started_at = started_at or timezone.now()
        for _attempt in range(5):
            try:
                with transaction.atomic():
                    rental = Rental.objects.create(
                        rental_code=new_rental_code(),
                        user=user,
                        power_bank=bank,
                        package=package,
                        status=RentalStatus.ACTIVE,
                        started_at=started_at,
                        due_at=started_at + timedelta(minutes=package.duration_minutes),
                        station=bank.current_station,
                        base_amount=package.price,
                        payment_status=(
                            PaymentStatus.PAID
                            if package.payment_model == PaymentModel.PREPAID
                            else PaymentStatus.PENDING
                        ),
                    )
                break
            except IntegrityError:
                if Rental.objects.filter(power_bank=bank, status__in=OPEN_RENTAL_STATUSES).exists():
                    raise Conflict(f"Power bank {bank.serial_number} is already rented.") from None
                continue  # a rental code collision: draw another
        else:  # pragma: no cover - 31^8 codes
            raise Conflict("Could not allocate a rental code.")
        take_out_for_rental(bank, now=timezone.now())
        logger.info("Rental %s started for bank %s", rental.rental_code, bank.serial_number)
        return rental

    @staticmethod
    def mark_overdue(*, now: datetime | None = None) -> int:
        """ACTIVE rentals past their due time become OVERDUE; returns how many."""
        now = now or timezone.now()
        return Rental.objects.filter(Q(status=RentalStatus.ACTIVE) & Q(due_at__lt=now)).update(
            status=RentalStatus.OVERDUE, updated_at=now
        )
