"""
Stations (cabinets), their numbered slots, the power banks in them, the status history of
each station and the log of every message the IoT system sent us.

Field names follow the original design (`serial_number`, `station_name`, `current_slot`,
...). Invariants live in the database as constraints; see each model's `Meta`.
"""

import json
import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class StationStatus(models.TextChoices):
    ONLINE = "ONLINE", "Online"
    OFFLINE = "OFFLINE", "Offline"
    MAINTENANCE = "MAINTENANCE", "Maintenance"


class SlotStatus(models.TextChoices):
    AVAILABLE = "AVAILABLE", "Available"
    OCCUPIED = "OCCUPIED", "Occupied"
    ERROR = "ERROR", "Error"
    MAINTENANCE = "MAINTENANCE", "Maintenance"


class PowerBankStatus(models.TextChoices):
    AVAILABLE = "AVAILABLE", "Available"
    RENTED = "RENTED", "Rented"
    MAINTENANCE = "MAINTENANCE", "Maintenance"
    DAMAGED = "DAMAGED", "Damaged"


class StatusTrigger(models.TextChoices):
    STATUS_EVENT = "STATUS_EVENT", "Status message"
    FULL_SYNC = "FULL_SYNC", "Full sync"
    TIMEOUT = "TIMEOUT", "Heartbeat timeout"
    ADMIN = "ADMIN", "Operator"


# Placeholders a new station gets until an operator places it (docs/design.md, rule 5).
PENDING_ADDRESS = "Pending"


def _battery_range(name):
    return models.CheckConstraint(
        condition=Q(battery_level__gte=0, battery_level__lte=100), name=name
    )


class Station(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    serial_number = models.CharField(max_length=64, unique=True)
    imei = models.CharField("IMEI", max_length=64, blank=True, db_index=True)

    # Operator-owned: a sync never overwrites these.
    station_name = models.CharField(max_length=128)
    address = models.CharField(max_length=255, blank=True, default=PENDING_ADDRESS)
    latitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        default=0,
        validators=[MinValueValidator(-90), MaxValueValidator(90)],
    )
    longitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        default=0,
        validators=[MinValueValidator(-180), MaxValueValidator(180)],
    )

    # Sync-managed.
    total_slots = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=StationStatus.choices, default=StationStatus.OFFLINE
    )
    status_changed_at = models.DateTimeField(null=True, blank=True)
    hardware_info = models.JSONField(default=dict, blank=True)
    firmware_version = models.CharField(max_length=32, blank=True)
    signal_strength = models.CharField(max_length=16, blank=True)
    wifi_ssid = models.CharField("Wi-Fi SSID", max_length=64, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # The body timestamp of the newest full or status message applied: older ones are stale.
    device_state_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serial_number"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=StationStatus.values), name="station_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(latitude__gte=-90, latitude__lte=90)
                & Q(longitude__gte=-180, longitude__lte=180),
                name="station_coordinates_valid",
            ),
        ]
        indexes = [models.Index(fields=["status"], name="station_status_idx")]
        permissions = [("push_station_data", "Can push station data (the IoT system's account)")]

    def __str__(self):
        return f"{self.station_name} ({self.serial_number})"


class StationSlot(models.Model):
    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="slots")
    slot_number = models.PositiveSmallIntegerField()
    status = models.CharField(
        max_length=16, choices=SlotStatus.choices, default=SlotStatus.AVAILABLE
    )
    battery_level = models.PositiveSmallIntegerField(default=0)
    slot_metadata = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["station", "slot_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["station", "slot_number"], name="slot_number_unique_per_station"
            ),
            models.CheckConstraint(condition=Q(slot_number__gte=1), name="slot_number_positive"),
            models.CheckConstraint(
                condition=Q(status__in=SlotStatus.values), name="slot_status_valid"
            ),
            _battery_range("slot_battery_level_0_100"),
        ]

    def __str__(self):
        return f"{self.station.serial_number} #{self.slot_number}"


class PowerBank(models.Model):
    serial_number = models.CharField(max_length=64, unique=True)
    # Operator-owned once set; a sync creates banks with these blank and never writes them.
    model = models.CharField(max_length=64, blank=True)
    capacity_mah = models.PositiveIntegerField("capacity (mAh)", null=True, blank=True)

    status = models.CharField(
        max_length=16, choices=PowerBankStatus.choices, default=PowerBankStatus.AVAILABLE
    )
    battery_level = models.PositiveSmallIntegerField(default=0)
    hardware_info = models.JSONField(default=dict, blank=True)
    current_station = models.ForeignKey(
        Station, null=True, blank=True, on_delete=models.SET_NULL, related_name="power_banks"
    )
    current_slot = models.ForeignKey(
        StationSlot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serial_number"]
        constraints = [
            # A slot holds at most one power bank, ever.
            models.UniqueConstraint(
                fields=["current_slot"],
                condition=Q(current_slot__isnull=False),
                name="one_power_bank_per_slot",
            ),
            # A bank in a slot is at that slot's station (the sync writes both together).
            models.CheckConstraint(
                condition=Q(current_slot__isnull=True) | Q(current_station__isnull=False),
                name="power_bank_slot_implies_station",
            ),
            models.CheckConstraint(
                condition=Q(status__in=PowerBankStatus.values), name="power_bank_status_valid"
            ),
            _battery_range("power_bank_battery_level_0_100"),
        ]

    def __str__(self):
        return self.serial_number


class StationStatusHistory(models.Model):
    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="status_history")
    status = models.CharField(max_length=16, choices=StationStatus.choices)
    previous_status = models.CharField(max_length=16, choices=StationStatus.choices, blank=True)
    changed_at = models.DateTimeField()
    seconds_in_previous_status = models.PositiveIntegerField(null=True, blank=True)
    trigger = models.CharField(max_length=16, choices=StatusTrigger.choices)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name_plural = "station status history"
        indexes = [
            models.Index(fields=["station", "-changed_at"], name="status_history_station_idx")
        ]

    def __str__(self):
        return f"{self.station_id}: {self.previous_status or '-'} -> {self.status}"


class IoTEventOutcome(models.TextChoices):
    RECEIVED = "RECEIVED", "Received (being processed)"
    PROCESSED = "PROCESSED", "Processed"
    DUPLICATE = "DUPLICATE", "Duplicate of an earlier delivery"
    STALE = "STALE", "Stale (recorded, not applied)"
    REJECTED = "REJECTED", "Rejected"
    FAILED = "FAILED", "Failed"


class IoTEvent(models.Model):
    """
    One row per request that passed the signature check (docs/design.md, rule 1).

    The first delivery of a body owns its digest and keeps the body; every later delivery
    of the same bytes is a row of its own pointing at it through `duplicate_of`, with the
    size, source and answer but not another copy of the body.
    """

    received_at = models.DateTimeField(db_index=True)
    message_type = models.CharField(max_length=16, blank=True)
    station_serial = models.CharField(max_length=64, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    body_sha256 = models.CharField("body SHA-256", max_length=64)
    # The size of what this delivery carried, whether or not its row keeps the body.
    body_bytes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Size of the body as received, in bytes (empty on rows logged before it was kept)."
    )
    # Both kept on the body's first delivery only: a repeat has the same bytes (same digest).
    payload = models.JSONField(null=True, blank=True)
    raw_body = models.TextField(blank=True, help_text="Kept only when the body is not JSON, on its first delivery.")
    outcome = models.CharField(
        max_length=16, choices=IoTEventOutcome.choices, default=IoTEventOutcome.RECEIVED
    )
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="duplicates",
        db_index=False,  # partial index below
        # No foreign key in the database: on PostgreSQL the log is partitioned by day and
        # nothing can reference it by `id` alone. A repeat may outlive its first delivery
        # (dropped with its day); readers treat the link as possibly dangling.
        db_constraint=False,
    )
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The JSON text exactly as answered, so a repeated body gets byte-for-byte the same
    # answer (PostgreSQL's jsonb would reorder the keys).
    response = models.TextField(blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When a processing attempt first failed (outcome FAILED or a 5xx answer), and kept when
    # a later attempt succeeds. It is what finds failed rows, not `outcome`: the UPDATE that
    # settles a row changes `outcome`, and an indexed column changed makes it write a new
    # index entry in every index (not a HOT update); this one is written only on a failure.
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name = "IoT event"
        constraints = [
            models.UniqueConstraint(
                fields=["body_sha256"],
                condition=Q(duplicate_of__isnull=True),
                name="iot_event_body_unique",
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=IoTEventOutcome.values), name="iot_event_outcome_valid"
            ),
            # A failed row always has `failed_at`, whoever writes it, or the readers of
            # `failed_events_q` would miss it.
            models.CheckConstraint(
                condition=Q(failed_at__isnull=False)
                | (~Q(outcome=IoTEventOutcome.FAILED) & (Q(http_status__isnull=True) | Q(http_status__lt=500))),
                name="iot_event_failure_dated",
            ),
        ]
        # Every message inserts a row and updates it once, with its outcome. No index may
        # hold a column that update changes (`outcome`, `http_status`, ...), or it is not a
        # HOT update and writes an entry into every index again (docs/performance.md, "Ninth
        # pass"). Each index here is paid for by every message: no `db_index=True` on text
        # columns (on PostgreSQL it adds a second, `LIKE`-only index that no lookup here
        # uses), and partial indexes for the duplicates and the failures, which are few.
        indexes = [
            models.Index(fields=["station_serial"], name="iot_event_station_serial_idx"),
            models.Index(
                fields=["duplicate_of"],
                name="iot_event_duplicate_of_idx",
                condition=Q(duplicate_of__isnull=False),
            ),
            models.Index(fields=["failed_at"], name="iot_event_failed_at_idx", condition=Q(failed_at__isnull=False)),
        ]

    def __str__(self):
        return f"#{self.pk} {self.message_type or '?'} {self.station_serial} {self.outcome}"

    @property
    def response_data(self):
        """The answer as decoded JSON (None if nothing was answered yet)."""
        return json.loads(self.response) if self.response else None
