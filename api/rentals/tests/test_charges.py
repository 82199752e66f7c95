"""The charges of a rental: one pure function (docs/design.md, rule 7)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.test import SimpleTestCase

from api.rentals.models import PaymentModel, PaymentStatus
from api.rentals.services.charges import compute_charges

START = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def charges(ended_after: timedelta, *, price="60", duration=60, model=PaymentModel.PREPAID, multiplier="2", grace=0):
    return compute_charges(
        price=Decimal(price),
        duration_minutes=duration,
        payment_model=model,
        late_multiplier=Decimal(multiplier),
        grace_minutes=grace,
        started_at=START,
        due_at=START + timedelta(minutes=duration),
        ended_at=START + ended_after,
    )


class ChargesTests(SimpleTestCase):
    def test_prepaid_on_time_costs_the_price_and_nothing_is_owed(self):
        result = charges(timedelta(minutes=30))
        self.assertEqual((result.base_amount, result.overdue_amount), (Decimal("60.00"), Decimal("0.00")))
        self.assertTrue(result.is_on_time)
        self.assertEqual(result.payment_status, PaymentStatus.PAID)

    def test_postpaid_on_time_costs_the_minutes_used_and_is_owed(self):
        result = charges(timedelta(minutes=30), model=PaymentModel.POSTPAID)
        self.assertEqual(result.base_amount, Decimal("30.00"))
        self.assertEqual(result.payment_status, PaymentStatus.PENDING)

    def test_postpaid_of_zero_minutes_owes_nothing(self):
        result = charges(timedelta(0), model=PaymentModel.POSTPAID)
        self.assertEqual(result.total, Decimal("0.00"))
        self.assertEqual(result.payment_status, PaymentStatus.PAID)

    def test_late_within_the_grace_minutes_is_not_charged(self):
        result = charges(timedelta(minutes=64), grace=5)
        self.assertEqual(result.overdue_amount, Decimal("0.00"))
        self.assertEqual(result.minutes_late, 4)
        self.assertTrue(result.is_on_time)

    def test_late_beyond_the_grace_minutes_is_charged_at_the_multiplied_rate(self):
        result = charges(timedelta(minutes=70), grace=5)
        # 10 minutes late, 5 of grace: 1.00/min x 2 x 5
        self.assertEqual(result.overdue_amount, Decimal("10.00"))
        self.assertFalse(result.is_on_time)
        self.assertEqual(result.payment_status, PaymentStatus.PENDING)
        self.assertEqual(result.total, Decimal("70.00"))

    def test_minutes_are_rounded_up(self):
        result = charges(timedelta(minutes=60, seconds=1), model=PaymentModel.POSTPAID)
        self.assertEqual(result.minutes_used, 61)
        self.assertEqual(result.minutes_late, 1)
        self.assertEqual(result.base_amount, Decimal("61.00"))
        self.assertEqual(result.overdue_amount, Decimal("2.00"))

    def test_money_is_rounded_half_up_to_cents_once_at_the_end(self):
        # rate 10/3 per minute; 1 minute late x 1.5 = 5.0 exactly; 7 minutes used postpaid = 23.333..
        result = charges(
            timedelta(minutes=7), price="10", duration=3, model=PaymentModel.POSTPAID, multiplier="1.5"
        )
        self.assertEqual(result.base_amount, Decimal("23.33"))
        self.assertEqual(result.overdue_amount, Decimal("20.00"))  # 4 late minutes x 10/3 x 1.5
        half = charges(timedelta(minutes=1), price="0.01", duration=2, model=PaymentModel.POSTPAID)
        self.assertEqual(half.base_amount, Decimal("0.01"))  # 0.005 rounds half up

    def test_a_custom_late_multiplier_is_used(self):
        result = charges(timedelta(minutes=61), multiplier="3")
        self.assertEqual(result.overdue_amount, Decimal("3.00"))
