"""The money of a rental: one pure function, no database (docs/design.md, rule 7)."""

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from api.rentals.models import PaymentModel, PaymentStatus

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Charges:
    base_amount: Decimal
    overdue_amount: Decimal
    minutes_used: int
    minutes_late: int
    is_on_time: bool
    prepaid: bool

    @property
    def total(self) -> Decimal:
        return self.base_amount + self.overdue_amount

    @property
    def payment_status(self) -> str:
        # Prepaid base is settled when the rental starts; what remains owed is what is
        # left for payment code to collect.
        return PaymentStatus.PAID if self.amount_owed == 0 else PaymentStatus.PENDING

    @property
    def amount_owed(self) -> Decimal:
        return self.overdue_amount if self.prepaid else self.total


def _whole_minutes(seconds: float) -> int:
    """Whole minutes, rounded up: 61 seconds are 2 minutes; 0 seconds are 0 minutes."""
    return max(0, math.ceil(seconds / 60))


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def compute_charges(
    *,
    price: Decimal,
    duration_minutes: int,
    payment_model: str,
    late_multiplier: Decimal,
    grace_minutes: int,
    started_at: datetime,
    due_at: datetime,
    ended_at: datetime,
) -> Charges:
    """
    Charges for a rental that ran from `started_at` to `ended_at`.

    rate = price / duration_minutes per minute; base = price (PREPAID) or rate x minutes
    used (POSTPAID); overdue = rate x late_multiplier x minutes late beyond the grace
    minutes. Minutes are whole minutes rounded up; money is rounded half-up to 0.01 once,
    at the end, so per-minute rates keep their precision.
    """
    price = Decimal(price)
    rate = price / Decimal(duration_minutes)
    minutes_used = _whole_minutes((ended_at - started_at).total_seconds())
    minutes_late = _whole_minutes((ended_at - due_at).total_seconds())
    billable_late = max(0, minutes_late - grace_minutes)
    prepaid = payment_model == PaymentModel.PREPAID
    base = price if prepaid else rate * minutes_used
    overdue = rate * Decimal(late_multiplier) * billable_late
    return Charges(
        base_amount=_money(base),
        overdue_amount=_money(overdue),
        minutes_used=minutes_used,
        minutes_late=minutes_late,
        # Within the grace period the customer is on time: nothing late is charged.
        is_on_time=billable_late == 0,
        prepaid=prepaid,
    )
