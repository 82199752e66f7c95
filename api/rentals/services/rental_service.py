"""
Starting and closing rentals. Every write to a Rental goes through this module.

Starting a rental ejects its bank (docs/contract.md, "The other direction"): the rental is
committed as PENDING_POPUP, the cabinet is asked outside any transaction or lock, and the
answer settles it: ejected, it is ACTIVE from the moment the cabinet confirmed; refused, it
is CANCELLED and costs nothing. Without an answer it stays PENDING_POPUP until the cabinet
reports for itself (a full sync, or the inventory `monitor_stations` asks for): bank gone
from its slot, ACTIVE from the request; still there `IOT_POPUP_GRACE_SECONDS` after it,
CANCELLED. An ejection whose outcome is unknown is never sent again.
"""

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from api.iot_system.client import EjectOutcome, EjectResult, InventoryResult, get_client
from api.rentals.models import (
    BANK_TAKEN_STATUSES,
    PaymentModel,
    PaymentStatus,
    Rental,
    RentalPackage,
    RentalStatus,
)
from api.rentals.services.charges import Charges, compute_charges
from api.rentals.signals import rental_cancelled, rental_completed
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


def open_rentals_clause(serials: Iterable[str], *, pending_at: str | None = None) -> tuple[str, list]:
    """
    `FROM .. WHERE ..` of the rentals (aliased `rental`) that have taken the banks with these
    serials (being ejected, or with the customer), and with `pending_at` (an SQL expression
    for a station id: a column, or `%s` followed by its value in the parameters) also the
    ejections pending at that station, whatever their bank. Fixed SQL, for the statements a
    full sync runs on every message.
    """
    serial_match, params = sql.in_values("bank.serial_number", serials)
    status_match, status_params = sql.in_values("rental.status", [status.value for status in BANK_TAKEN_STATUSES])
    where = f"({serial_match} AND {status_match})"
    params = params + status_params
    if pending_at is not None:
        where += f" OR (rental.status = '{RentalStatus.PENDING_POPUP.value}' AND rental.station_id = {pending_at})"
    return (
        f"FROM {_RENTAL_TABLE} rental JOIN {_BANK_TABLE} bank ON bank.id = rental.power_bank_id WHERE {where}",
        params,
    )


def _complete(
    rental: Rental, *, ended_at: datetime, return_station: Station, battery_level: int | None, now: datetime
) -> Charges:
    # A return of a bank whose ejection was never confirmed proves it left: the rental ran
    # from the request, which is when it started.
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
_SETTLEMENT_FIELDS = [
    "status",
    "started_at",
    "due_at",
    "ended_at",
    "base_amount",
    "overdue_amount",
    "payment_status",
    "ejection_outcome",
    "ejection_message",
    "updated_at",
]


def _activate(rental: Rental, *, started_at: datetime, outcome: str, message: str, now: datetime) -> None:
    """The customer has the bank since `started_at`: the package's time runs from then."""
    package = rental.package
    duration = (
        timedelta(minutes=package.duration_minutes) if package is not None else rental.due_at - rental.started_at
    )
    rental.status = RentalStatus.ACTIVE
    rental.started_at = started_at
    rental.due_at = started_at + duration
    rental.base_amount = package.price if package is not None else 0
    rental.payment_status = (
        PaymentStatus.PAID
        if package is None or package.payment_model == PaymentModel.PREPAID
        else PaymentStatus.PENDING
    )
    rental.ejection_outcome = outcome
    rental.ejection_message = message[:300]
    rental.updated_at = now


def _cancel(rental: Rental, *, outcome: str, reason: str, now: datetime) -> None:
    """The bank never left: nothing is owed."""
    rental.status = RentalStatus.CANCELLED
    rental.ended_at = max(now, rental.started_at)
    rental.base_amount = 0
    rental.overdue_amount = 0
    rental.payment_status = PaymentStatus.PAID
    rental.ejection_outcome = outcome
    rental.ejection_message = reason[:300]
    rental.updated_at = now


def _cancelled_on_commit(rentals: Iterable[Rental]) -> None:
    for rental in rentals:
        transaction.on_commit(lambda rental=rental: rental_cancelled.send_robust(sender=Rental, rental=rental))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Settlement:
    """What a cabinet's report did to the pending ejections it spoke about."""

    activated: list[Rental] = field(default_factory=list)
    cancelled: list[Rental] = field(default_factory=list)
    still_pending: list[Rental] = field(default_factory=list)


@dataclass
class StationCheck:
    """An inventory asked of a cabinet, and what it settled."""

    station: Station
    inventory: InventoryResult
    settlement: Settlement


class RentalService:
    """Rental lifecycle: start (and eject), settle an ejection, complete on return, mark overdue."""

    # --- Locks and reads for station messages ---------------------------------------------

    @staticmethod
    def open_rentals_for(*, serials: Iterable[str], pending_at: Station | None = None) -> list[Rental]:
        """
        The rentals that have taken the banks with these serials (PENDING_POPUP, ACTIVE or
        OVERDUE), and with `pending_at` also every ejection pending at that station, locked in
        id order, with their packages and banks. The caller is in a transaction and holds
        its station's lock; rentals are locked before banks and slots (docs/design.md).
        """
        # Usually none is open: lock and find them with one fixed statement (a full sync runs
        # it for every message), and load the rows (with package and bank) only when there
        # are some.
        if pending_at is None:
            clause, params = open_rentals_clause(serials)
        else:
            clause, params = open_rentals_clause(serials, pending_at="%s")
            params = [*params, sql.db_value(Station._meta.pk, pending_at.pk)]
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

    # --- Returns --------------------------------------------------------------------------

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
        `now`. The caller holds the rentals' row locks (`open_rentals_for`). A rental still
        PENDING_POPUP is closed as well: its bank came back, so it had left.
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

    # --- Starting a rental ------------------------------------------------------------------

    @staticmethod
    def start_rental(
        *,
        user,
        power_bank: PowerBank,
        package: RentalPackage,
        started_at: datetime | None = None,
        cabinet=None,
    ) -> Rental:
        """
        Hand `power_bank` to `user` on `package`: commit the rental as PENDING_POPUP, ask the
        bank's cabinet to eject it (outside any transaction: the IoT system may take 15 s),
        and settle the rental by the answer. Returns the rental as the answer left it, with
        `ejection_outcome` and `ejection_message` saying what the cabinet said.

        `started_at` is the moment of the request (default now); `cabinet` the IoT system's
        client (default the process's, from the settings). Raises `Conflict` when the bank is
        taken, not AVAILABLE or not in a slot, and RuntimeError inside a transaction.
        """
        requested_at = started_at or timezone.now()
        rental = RentalService._reserve(user=user, power_bank=power_bank, package=package, requested_at=requested_at)
        ejection = (cabinet or get_client()).popup(rental.station.serial_number, rental.power_bank.serial_number)
        return RentalService.settle_ejection(rental, ejection)

    @staticmethod
    def _reserve(*, user, power_bank: PowerBank, package: RentalPackage, requested_at: datetime) -> Rental:
        """
        The rental, committed as PENDING_POPUP: from here on the bank cannot be rented again.
        Locks as every station message does (station, then bank); nothing is written to the
        bank or its slot until the cabinet says the bank left.
        """
        # Durable: the cabinet is asked after this commits, never inside a caller's transaction.
        with transaction.atomic(durable=True):
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
            if Rental.objects.filter(power_bank=bank, status__in=BANK_TAKEN_STATUSES).exists():
                raise Conflict(f"Power bank {bank.serial_number} is already rented.")
            if bank.current_slot_id is None:
                raise Conflict(f"Power bank {bank.serial_number} is not in a slot: no cabinet can eject it.")
            for _attempt in range(5):
                try:
                    with transaction.atomic():
                        rental = Rental.objects.create(
                            rental_code=new_rental_code(),
                            user=user,
                            power_bank=bank,
                            package=package,
                            status=RentalStatus.PENDING_POPUP,
                            started_at=requested_at,
                            due_at=requested_at + timedelta(minutes=package.duration_minutes),
                            station=bank.current_station,
                            base_amount=0,
                            payment_status=PaymentStatus.PENDING,
                            ejection_requested_at=requested_at,
                            ejection_message="asking the cabinet to eject the bank",
                        )
                    break
                except IntegrityError:
                    if Rental.objects.filter(power_bank=bank, status__in=BANK_TAKEN_STATUSES).exists():
                        raise Conflict(f"Power bank {bank.serial_number} is already rented.") from None
                    continue  # a rental code collision: draw another
            else:  # pragma: no cover - 31^8 codes
                raise Conflict("Could not allocate a rental code.")
        logger.info(
            "Rental %s: asking station %s to eject bank %s",
            rental.rental_code,
            bank.current_station.serial_number,
            bank.serial_number,
        )
        return rental

    @staticmethod
    def settle_ejection(rental: Rental, ejection: EjectResult, *, now: datetime | None = None) -> Rental:
        """
        Settle a PENDING_POPUP rental by the cabinet's answer to its ejection: ejected, ACTIVE
        from the moment the cabinet confirmed; refused, CANCELLED; otherwise it stays pending
        with what went wrong recorded. A rental a cabinet report settled meanwhile is left as
        it is: a rental is settled once.
        """
        now = now or timezone.now()
        with transaction.atomic(durable=True):
            if ejection.outcome == EjectOutcome.EJECTED and rental.station_id is not None:
                # Station, rental, bank, slot: the lock order of every writer.
                Station.objects.select_for_update().filter(pk=rental.station_id).first()
            locked = (
                Rental.objects.select_for_update(of=("self",))
                .select_related("package", "power_bank", "station", "user")
                .get(pk=rental.pk)
            )
            if locked.status != RentalStatus.PENDING_POPUP:
                logger.info(
                    "Rental %s: ejection answer %s after the rental was settled (%s); left as it is",
                    locked.rental_code,
                    ejection.outcome,
                    locked.status,
                )
                return locked
            if ejection.outcome == EjectOutcome.EJECTED:
                bank = PowerBank.objects.select_for_update().get(pk=locked.power_bank_id)
                requested_at = locked.ejection_requested_at or locked.started_at
                confirmed_at = min(requested_at + timedelta(seconds=ejection.elapsed), max(now, requested_at))
                _activate(locked, started_at=confirmed_at, outcome=ejection.outcome, message=ejection.message, now=now)
                locked.save(update_fields=_SETTLEMENT_FIELDS)
                if bank.current_station_id in (None, locked.station_id):
                    # At another station a sync has placed it since; that station's reports rule it.
                    take_out_for_rental(bank, now=now)
                logger.info("Rental %s: ACTIVE, bank %s ejected", locked.rental_code, bank.serial_number)
            elif ejection.outcome == EjectOutcome.REFUSED:
                _cancel(locked, outcome=ejection.outcome, reason=f"the cabinet refused: {ejection.message}", now=now)
                locked.save(update_fields=_SETTLEMENT_FIELDS)
                _cancelled_on_commit([locked])
                logger.info("Rental %s: CANCELLED, %s", locked.rental_code, ejection.message)
            else:
                locked.ejection_outcome = ejection.outcome
                locked.ejection_message = (
                    f"{ejection.message}; waiting for the cabinet's next report (not sent again)"
                )[:300]
                locked.updated_at = now
                locked.save(update_fields=["ejection_outcome", "ejection_message", "updated_at"])
                logger.warning(
                    "Rental %s: ejection outcome unknown (%s); PENDING_POPUP until the cabinet reports",
                    locked.rental_code,
                    ejection.outcome,
                )
        return locked

    # --- Settling pending ejections by the cabinet's own reports ------------------------------

    @staticmethod
    def settle_from_report(
        pending: Iterable[Rental],
        *,
        bank_slots: dict[str, int],
        reported_at: datetime,
        source: str,
        now: datetime | None = None,
    ) -> Settlement:
        """
        Settle PENDING_POPUP rentals by a cabinet's report of its slots at `reported_at`
        (`bank_slots`: bank serial -> slot): a bank no longer in a slot left with its customer,
        ACTIVE from the request; a bank still in a slot `IOT_POPUP_GRACE_SECONDS` after the
        request never left, CANCELLED. A report older than the request, or a bank still in its
        slot within the grace, decides nothing. The caller holds the station's and the
        rentals' locks and moves the banks of the activated rentals out; one UPDATE here.
        """
        now = now or timezone.now()
        grace = timedelta(seconds=settings.IOT_POPUP_GRACE_SECONDS)
        settlement = Settlement()
        for rental in pending:
            if rental.status != RentalStatus.PENDING_POPUP:
                continue
            requested_at = rental.ejection_requested_at or rental.started_at
            slot = bank_slots.get(rental.power_bank.serial_number)
            if slot is not None and reported_at - requested_at >= grace:
                _cancel(
                    rental,
                    outcome=rental.ejection_outcome or "NOT_EJECTED",
                    reason=f"{source} at {_stamp(reported_at)} still shows the bank in slot {slot}: never ejected",
                    now=now,
                )
                settlement.cancelled.append(rental)
            elif slot is None and reported_at >= requested_at:
                _activate(
                    rental,
                    started_at=requested_at,
                    outcome=rental.ejection_outcome or "EJECTED",
                    message=f"{source} at {_stamp(reported_at)} no longer shows the bank: ejected at the request",
                    now=now,
                )
                settlement.activated.append(rental)
            else:
                settlement.still_pending.append(rental)
        settled = settlement.activated + settlement.cancelled
        if settled:
            Rental.objects.bulk_update(settled, _SETTLEMENT_FIELDS)
            _cancelled_on_commit(settlement.cancelled)
            logger.info(
                "%s: %d ejection(s) confirmed (%s), %d cancelled (%s)",
                source,
                len(settlement.activated),
                ", ".join(rental.rental_code for rental in settlement.activated) or "-",
                len(settlement.cancelled),
                ", ".join(rental.rental_code for rental in settlement.cancelled) or "-",
            )
        return settlement

    @staticmethod
    def check_station(station: Station, *, cabinet=None, now: datetime | None = None) -> StationCheck:
        """
        Ask the cabinet for its inventory now (outside any transaction) and settle the
        ejections pending at the station by it. The slots and banks are not rewritten from
        it: full syncs, signed and ordered, remain the one writer of a station's inventory.
        """
        asked_at = timezone.now()
        inventory = (cabinet or get_client()).check_all(station.serial_number)
        if not inventory.ok:
            pending = list(
                Rental.objects.filter(station=station, status=RentalStatus.PENDING_POPUP).order_by("pk")
            )
            return StationCheck(station=station, inventory=inventory, settlement=Settlement(still_pending=pending))
        now = now or timezone.now()
        with transaction.atomic(durable=True):
            # Station, rentals, banks, slots: the lock order of every writer.
            Station.objects.select_for_update().filter(pk=station.pk).first()
            pending = list(
                Rental.objects.select_for_update(of=("self",))
                .select_related("package", "power_bank")
                .filter(station=station, status=RentalStatus.PENDING_POPUP)
                .order_by("pk")
            )
            settlement = RentalService.settle_from_report(
                pending,
                bank_slots=inventory.bank_slots(),
                reported_at=asked_at,
                source=f"the inventory of station {station.serial_number}",
                now=now,
            )
            if settlement.activated:
                banks = PowerBank.objects.select_for_update().filter(
                    pk__in=[rental.power_bank_id for rental in settlement.activated]
                ).order_by("pk")
                for bank in banks:
                    if bank.current_station_id in (None, station.pk):
                        take_out_for_rental(bank, now=now)
        return StationCheck(station=station, inventory=inventory, settlement=settlement)

    @staticmethod
    def settle_stale_ejections(*, now: datetime | None = None, cabinet=None, limit: int = 20) -> list[StationCheck]:
        """
        For `monitor_stations`: the stations with an ejection pending longer than
        `IOT_POPUP_GRACE_SECONDS`, oldest first, up to `limit`, each asked for its inventory
        and settled by it. Nothing is ejected again.
        """
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.IOT_POPUP_GRACE_SECONDS)
        oldest: dict = {}
        for station_id, requested_at in (
            Rental.objects.filter(status=RentalStatus.PENDING_POPUP, station__isnull=False)
            .filter(Q(ejection_requested_at__lte=cutoff) | Q(ejection_requested_at__isnull=True, started_at__lte=cutoff))
            .order_by("ejection_requested_at")
            .values_list("station_id", "ejection_requested_at")
        ):
            oldest.setdefault(station_id, requested_at)
        stations = Station.objects.in_bulk(list(oldest)[:limit])
        client = cabinet or get_client()
        return [
            RentalService.check_station(stations[station_id], cabinet=client)
            for station_id in list(oldest)[:limit]
            if station_id in stations
        ]

    # --- Overdue ------------------------------------------------------------------------------

    @staticmethod
    def mark_overdue(*, now: datetime | None = None) -> int:
        """ACTIVE rentals past their due time become OVERDUE; returns how many."""
        now = now or timezone.now()
        return Rental.objects.filter(Q(status=RentalStatus.ACTIVE) & Q(due_at__lt=now)).update(
            status=RentalStatus.OVERDUE, updated_at=now
        )
