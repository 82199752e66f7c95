"""Rental packages (what a customer buys) and rentals (a customer holding a power bank)."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class PaymentModel(models.TextChoices):
    PREPAID = "PREPAID", "Prepaid"
    POSTPAID = "POSTPAID", "Postpaid"


class RentalStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    # Committed; the cabinet has been asked to eject the bank and has not said it did.
    PENDING_POPUP = "PENDING_POPUP", "Ejecting"
    ACTIVE = "ACTIVE", "Active"
    OVERDUE = "OVERDUE", "Overdue"
    COMPLETED = "COMPLETED", "Completed"
    CANCELLED = "CANCELLED", "Cancelled"


# A rental is "open" while the customer holds the bank.
OPEN_RENTAL_STATUSES = (RentalStatus.ACTIVE, RentalStatus.OVERDUE)
# The bank is taken by the rental: being ejected for it, or with its customer. At most one
# rental per bank is in one of these (the database holds it), so a bank cannot be rented
# twice while its ejection is under way.
BANK_TAKEN_STATUSES = (RentalStatus.PENDING_POPUP, *OPEN_RENTAL_STATUSES)


class PaymentStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    PAID = "PAID", "Paid"
    FAILED = "FAILED", "Failed"
    REFUNDED = "REFUNDED", "Refunded"


class RentalPackage(models.Model):
    name = models.CharField(max_length=100)
    duration_minutes = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    payment_model = models.CharField(
        max_length=16, choices=PaymentModel.choices, default=PaymentModel.PREPAID
    )
    late_multiplier = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("2"))
    grace_minutes = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["duration_minutes", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(duration_minutes__gt=0), name="package_duration_positive"
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="package_price_not_negative"),
            models.CheckConstraint(
                condition=Q(late_multiplier__gte=0), name="package_late_multiplier_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(payment_model__in=PaymentModel.values), name="package_payment_model_valid"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.duration_minutes} min, {self.price})"


class Rental(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    rental_code = models.CharField(max_length=8, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rentals"
    )
    power_bank = models.ForeignKey(
        "stations.PowerBank", on_delete=models.PROTECT, related_name="rentals"
    )
    package = models.ForeignKey(
        RentalPackage, on_delete=models.PROTECT, related_name="rentals", null=True, blank=True
    )
    status = models.CharField(
        max_length=16, choices=RentalStatus.choices, default=RentalStatus.PENDING
    )
    started_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    station = models.ForeignKey(
        "stations.Station",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="rentals_started",
        verbose_name="start station",
    )
    return_station = models.ForeignKey(
        "stations.Station",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="rentals_returned",
    )
    is_returned_on_time = models.BooleanField(default=False)
    base_amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    overdue_amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    payment_status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    return_battery_level = models.PositiveSmallIntegerField(null=True, blank=True)
    # The ejection (docs/contract.md, "The other direction"): when the cabinet was asked, the
    # answer's outcome, and for operators what the cabinet said or how the rental was
    # settled (the reason, for a cancelled one).
    ejection_requested_at = models.DateTimeField(null=True, blank=True)
    ejection_outcome = models.CharField(max_length=16, blank=True)
    ejection_message = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # A power bank is in at most one customer's hands, or on its way there.
            models.UniqueConstraint(
                fields=["power_bank"],
                condition=Q(status__in=BANK_TAKEN_STATUSES),
                name="one_open_rental_per_power_bank",
            ),
            models.CheckConstraint(
                condition=Q(status__in=RentalStatus.values), name="rental_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="rental_ends_after_start",
            ),
            models.CheckConstraint(
                condition=Q(base_amount__gte=0, overdue_amount__gte=0),
                name="rental_amounts_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(return_battery_level__isnull=True)
                | Q(return_battery_level__gte=0, return_battery_level__lte=100),
                name="rental_return_battery_level_0_100",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "due_at"], name="rental_status_due_idx"),
            # Ejections waiting for their cabinet's report, by station: a full sync asks for
            # them in its first statement, and there are usually none.
            models.Index(
                fields=["station"],
                condition=Q(status="PENDING_POPUP"),
                name="rental_pending_popup_idx",
            ),
        ]

    def __str__(self):
        return self.rental_code

    @property
    def total_amount(self) -> Decimal:
        return self.base_amount + self.overdue_amount
