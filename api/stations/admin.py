"""
The operators' admin for stations, power banks, status history and the IoT event log.

Operators place stations (name, address, coordinates) and watch the fleet; everything a
sync writes is read-only here. Writes other than placement go through services: status
changes through `services.stations.set_status_by_operator`, re-processing through
`ingest.delivery.reprocess`, rentals through `RentalService` (see api/rentals/admin.py).
"""

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.validators import RegexValidator
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from api.rentals.selectors import recent_rentals_of_bank
from api.rentals.services.rental_service import RentalService
from api.stations.ingest.delivery import reprocess
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    SlotStatus,
    Station,
    StationStatus,
    StationStatusHistory,
)
from api.stations.selectors import (
    CHARGED_BATTERY_LEVEL,
    banks_by_slot,
    failed_events_q,
    heartbeat_cutoff,
    placement_pending_q,
    recent_events_of_station,
    recent_status_history,
    rentable_power_banks_q,
    station_by_serial,
    with_slot_counts,
)
from api.stations.services.inventory import eject_for_maintenance
from api.stations.services.stations import set_status_by_operator
from main_app.admin_display import ADMIN_MEDIA_CSS, admin_link, age, choice_badge, duration, pre, pretty_json
from main_app.admin_filters import ConditionFilter
from main_app.exceptions import Conflict

RECENT_ROWS = 20
# Re-processing runs each body through the full pipeline inside the request: more than
# this belongs to `manage.py reprocess_iot_events`.
MAX_REPROCESS_PER_ACTION = 100
# Each cabinet asked from an action may take the IoT system's 15 s wait, inside the request.
MAX_CABINETS_PER_ACTION = 5

# --- Display: tones of the stations app's choices ---------------------------------------------

STATION_STATUS_TONE = {
    StationStatus.ONLINE: "ok",
    StationStatus.OFFLINE: "bad",
    StationStatus.MAINTENANCE: "warn",
}
POWER_BANK_STATUS_TONE = {
    PowerBankStatus.AVAILABLE: "ok",
    PowerBankStatus.RENTED: "info",
    PowerBankStatus.MAINTENANCE: "warn",
    PowerBankStatus.DAMAGED: "bad",
}
OUTCOME_TONE = {
    IoTEventOutcome.RECEIVED: "info",
    IoTEventOutcome.PROCESSED: "ok",
    IoTEventOutcome.DUPLICATE: "muted",
    IoTEventOutcome.STALE: "muted",
    IoTEventOutcome.REJECTED: "warn",
    IoTEventOutcome.FAILED: "bad",
}


def battery_meter(level: int | None):
    if level is None:
        return "-"
    tone = "ok" if level >= CHARGED_BATTERY_LEVEL else ("warn" if level >= 20 else "bad")
    return format_html(
        '<span class="cg-battery cg-battery--{}" title="{}%"><span style="width:{}%"></span></span> {}%',
        tone,
        level,
        level,
        level,
    )


# --- Stations --------------------------------------------------------------------------------


class HeartbeatFreshnessFilter(ConditionFilter):
    title = "heartbeat"
    parameter_name = "heartbeat"

    def conditions(self):
        minutes = settings.IOT_OFFLINE_AFTER_MINUTES
        cutoff = heartbeat_cutoff(timezone.now())
        return {
            "fresh": (f"Fresh (last {minutes} min)", Q(last_heartbeat__gte=cutoff)),
            "stale": (f"Stale (older than {minutes} min)", Q(last_heartbeat__lt=cutoff)),
            "never": ("Never heard from", Q(last_heartbeat__isnull=True)),
        }


class PlacementFilter(ConditionFilter):
    title = "placement"
    parameter_name = "placement"

    def conditions(self):
        return {
            "pending": ("Pending (placeholder location)", placement_pending_q()),
            "placed": ("Placed", ~placement_pending_q()),
        }


serial_validator = RegexValidator(
    r"^[A-Za-z0-9_-]{1,64}$", "1-64 letters, digits, '-' or '_' (the IMEI for real cabinets)."
)


# Operator-owned: a sync never overwrites these (docs/design.md, rule 5). Everything else is the sync's.
OPERATOR_FIELDS = ("station_name", "address", "latitude", "longitude")


class StationForm(forms.ModelForm):
    """Validates what the database would otherwise refuse (coordinates: the model's validators)."""

    class Meta:
        model = Station
        # The admin narrows this to the operator's fields on the change page.
        fields = ("serial_number", "imei", *OPERATOR_FIELDS)

    def clean_serial_number(self):
        value = self.cleaned_data["serial_number"]
        serial_validator(value)
        return value


DEVICE_FIELDS = (
    "serial_number",
    "imei",
    "status_display",
    "status_changed_at",
    "heartbeat_display",
    "firmware_version",
    "signal_strength",
    "wifi_ssid",
    "total_slots",
    "device_state_at",
    "hardware_info_display",
    "created_at",
    "updated_at",
)


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    form = StationForm
    list_display = (
        "station_name",
        "serial_number",
        "status_display",
        "heartbeat_display",
        "slots_display",
        "firmware_version",
        "signal_strength",
        "address",
    )
    list_display_links = ("station_name", "serial_number")
    list_filter = ("status", HeartbeatFreshnessFilter, PlacementFilter)
    search_fields = ("serial_number", "imei", "station_name", "address")
    readonly_fields = DEVICE_FIELDS
    actions = ("put_in_maintenance", "back_online", "refresh_inventory")
    list_per_page = 100
    change_form_template = "admin/stations/station/change_form.html"
    # The change page is long (slot map, history, messages): offer Save at the top too.
    save_on_top = True

    class Media:
        css = ADMIN_MEDIA_CSS

    def get_queryset(self, request):
        return with_slot_counts(super().get_queryset(request))

    def get_fieldsets(self, request, obj=None):
        placement = (
            "Placement",
            {
                "fields": ("station_name", "address", ("latitude", "longitude")),
                "description": "Set by operators; a sync from the cabinet never overwrites these.",
            },
        )
        if obj is None:
            # Registering a cabinet before it first reports: the sync will match it by IMEI.
            identity = ("Cabinet", {"fields": ("serial_number", "imei")})
            return [identity, placement]
        device = (
            "Device (reported by the cabinet, read-only)",
            {"fields": DEVICE_FIELDS},
        )
        return [placement, device]

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else DEVICE_FIELDS

    @admin.display(description="Status", ordering="status")
    def status_display(self, station):
        return choice_badge(station.status, StationStatus, STATION_STATUS_TONE)

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat_display(self, station):
        if station.last_heartbeat is None:
            return format_html('<span class="cg-age cg-age--stale">{}</span>', "never")
        stale = station.last_heartbeat < heartbeat_cutoff(timezone.now())
        return format_html(
            '<span class="cg-age{}" title="{}">{}</span>',
            " cg-age--stale" if stale else "",
            station.last_heartbeat.isoformat(timespec="seconds"),
            age(station.last_heartbeat),
        )

    @admin.display(
        description=f"Slots: charged (≥{CHARGED_BATTERY_LEVEL}%) / occupied / total",
        ordering="slots_charged",
    )
    def slots_display(self, station):
        return format_html(
            '<span class="cg-slots"><b class="{}">{}</b>/{}/{}</span>',
            "cg-slots--none" if station.slots_charged == 0 else "cg-slots--some",
            station.slots_charged,
            station.slots_occupied,
            station.slots_total,
        )

    @admin.display(description="Hardware info")
    def hardware_info_display(self, station):
        return pre(pretty_json(station.hardware_info)) if station.hardware_info else "-"

    # The change page: slot map, status history and recent messages below the fields.

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and not add:
            context.update(
                slot_cells=slot_cells(obj),
                charged_level=CHARGED_BATTERY_LEVEL,
                status_history=[
                    {
                        "changed_at": row.changed_at,
                        "previous": row.get_previous_status_display() or "-",
                        "status": row.get_status_display(),
                        "status_badge": choice_badge(row.status, StationStatus, STATION_STATUS_TONE),
                        "duration": duration(row.seconds_in_previous_status),
                        "trigger": row.get_trigger_display(),
                    }
                    for row in recent_status_history(obj, RECENT_ROWS)
                ],
                recent_events=[
                    {
                        "event": event,
                        "url": reverse("admin:stations_iotevent_change", args=[event.pk]),
                        "outcome": choice_badge(event.outcome, IoTEventOutcome, OUTCOME_TONE),
                    }
                    for event in recent_events_of_station(obj, RECENT_ROWS)
                ],
                all_events_url=reverse("admin:stations_iotevent_changelist")
                + "?"
                + urlencode({"station_serial": obj.serial_number}),
                history_url=reverse("admin:stations_stationstatushistory_changelist")
                + "?"
                + urlencode({"station__id__exact": obj.pk}),
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # Actions: status changes by an operator, written with trigger ADMIN.

    @admin.action(description="Put in maintenance", permissions=["change"])
    def put_in_maintenance(self, request, queryset):
        now = timezone.now()
        changed = unchanged = 0
        for station_id in queryset.values_list("pk", flat=True):
            _, history = set_status_by_operator(
                station_id=station_id, new_status=StationStatus.MAINTENANCE, at=now
            )
            changed += history is not None
            unchanged += history is None
        self.message_user(
            request,
            f"{changed} station(s) put in maintenance"
            + (f"; {unchanged} already were." if unchanged else "."),
            messages.SUCCESS,
        )
        if changed:
            self.message_user(
                request,
                "Note: the cabinet's next status message or full sync reports its own status "
                "and replaces MAINTENANCE.",
                messages.WARNING,
            )

    @admin.action(description="Back online (end maintenance)", permissions=["change"])
    def back_online(self, request, queryset):
        # ONLINE only for a cabinet we heard from recently; a silent one goes OFFLINE, as
        # the heartbeat monitor would mark it anyway.
        now = timezone.now()
        cutoff = heartbeat_cutoff(now)
        counts = {StationStatus.ONLINE: 0, StationStatus.OFFLINE: 0, None: 0}
        for station_id, heartbeat in queryset.values_list("pk", "last_heartbeat"):
            target = (
                StationStatus.ONLINE
                if heartbeat is not None and heartbeat >= cutoff
                else StationStatus.OFFLINE
            )
            _, history = set_status_by_operator(station_id=station_id, new_status=target, at=now)
            counts[target if history is not None else None] += 1
        parts = [f"{counts[StationStatus.ONLINE]} station(s) back ONLINE"]
        if counts[StationStatus.OFFLINE]:
            parts.append(
                f"{counts[StationStatus.OFFLINE]} set OFFLINE (no heartbeat in the last "
                f"{settings.IOT_OFFLINE_AFTER_MINUTES} min)"
            )
        if counts[None]:
            parts.append(f"{counts[None]} unchanged")
        self.message_user(request, "; ".join(parts) + ".", messages.SUCCESS)

    @admin.action(description="Refresh inventory now (ask the cabinet)", permissions=["change"])
    def refresh_inventory(self, request, queryset):
        # The cabinet's answer settles the station's pending ejections; the slots themselves
        # are rewritten by its next full sync (RentalService.check_station says why).
        stations = list(queryset.order_by("serial_number")[: MAX_CABINETS_PER_ACTION + 1])
        if len(stations) > MAX_CABINETS_PER_ACTION:
            self.message_user(
                request, f"Select at most {MAX_CABINETS_PER_ACTION} stations: each may take 15 s.", messages.WARNING
            )
            return
        for station in stations:
            check = RentalService.check_station(station)
            inventory, settled = check.inventory, check.settlement
            if not inventory.ok:
                self.message_user(
                    request,
                    f"{station.serial_number}: no inventory ({inventory.outcome}: {inventory.message})"
                    + (f"; {len(settled.still_pending)} ejection(s) still pending." if settled.still_pending else "."),
                    messages.WARNING,
                )
                continue
            said = ", ".join(
                f"slot {report.slot}: {report.bank_serial or 'empty'}"
                + (f" ({report.battery}%)" if report.bank_serial and report.battery is not None else "")
                + (f" [{report.message}]" if report.message not in ("", "OK", "NONE") else "")
                for report in inventory.slots
            )
            recorded = {
                serial: slot_number
                for serial, slot_number in PowerBank.objects.filter(
                    current_station=station, current_slot__isnull=False
                ).values_list("serial_number", "current_slot__slot_number")
            }
            differences = sorted(set(recorded.items()) ^ set(inventory.bank_slots().items()))
            text = f"{station.serial_number} says: {said or 'no slots'}."
            if settled.activated or settled.cancelled:
                text += (
                    f" Ejections confirmed: {', '.join(r.rental_code for r in settled.activated) or 'none'};"
                    f" cancelled: {', '.join(r.rental_code for r in settled.cancelled) or 'none'}."
                )
            if settled.still_pending:
                text += f" Still pending (within the grace): {', '.join(r.rental_code for r in settled.still_pending)}."
            if differences:
                text += f" Differs from our records in {len({serial for serial, _ in differences})} bank(s); the next full sync rewrites the slots."
            self.message_user(request, text, messages.SUCCESS)


def slot_cells(station: Station) -> list[dict]:
    """One cell per slot number 1..N for the slot map (two queries)."""
    slots = {slot.slot_number: slot for slot in station.slots.all()}
    banks = banks_by_slot(station)
    count = max([station.total_slots, *slots])
    cells = []
    for number in range(1, count + 1):
        slot = slots.get(number)
        if slot is None:
            cells.append({"number": number, "state": "unknown", "label": "Not reported"})
            continue
        bank = banks.get(slot.pk)
        state = slot.status.lower()
        if slot.status in (SlotStatus.OCCUPIED, SlotStatus.AVAILABLE) and bank is not None:
            state = "charged" if bank.battery_level >= CHARGED_BATTERY_LEVEL else "low"
        metadata = slot.slot_metadata if isinstance(slot.slot_metadata, dict) else {}
        cells.append(
            {
                "number": number,
                "state": state,
                "label": slot.get_status_display(),
                "bank": bank,
                "bank_url": (reverse("admin:stations_powerbank_change", args=[bank.pk]) if bank else ""),
                "battery": bank.battery_level if bank else None,
                "error_code": metadata.get("error_code") or "",
                "error_message": metadata.get("error_message") or "",
            }
        )
    return cells


# --- Power banks -----------------------------------------------------------------------------


class RentableFilter(ConditionFilter):
    title = "ready to rent"
    parameter_name = "rentable"

    def conditions(self):
        return {
            "yes": ("Yes (AVAILABLE, in a slot)", rentable_power_banks_q()),
            "no": ("No", ~rentable_power_banks_q()),
        }


class BatteryFilter(ConditionFilter):
    title = "battery"
    parameter_name = "battery"

    def conditions(self):
        return {
            "charged": (f"Charged (≥{CHARGED_BATTERY_LEVEL}%)", Q(battery_level__gte=CHARGED_BATTERY_LEVEL)),
            "low": (f"Below {CHARGED_BATTERY_LEVEL}%", Q(battery_level__lt=CHARGED_BATTERY_LEVEL)),
        }


class InSlotFilter(ConditionFilter):
    title = "location"
    parameter_name = "location"

    def conditions(self):
        return {
            "slot": ("In a slot", Q(current_slot__isnull=False)),
            "out": ("Not in a slot", Q(current_slot__isnull=True)),
        }


POWER_BANK_SYNC_FIELDS = (
    "serial_number",
    "status_display",
    "battery_display",
    "station_link",
    "slot_number",
    "hardware_info_display",
    "recent_rentals",
    "created_at",
    "updated_at",
)


@admin.register(PowerBank)
class PowerBankAdmin(admin.ModelAdmin):
    list_display = (
        "serial_number",
        "status_display",
        "battery_display",
        "current_station",
        "slot_number",
        "model",
        "capacity_mah",
        "updated_at",
    )
    list_select_related = ("current_station", "current_slot")
    list_filter = ("status", RentableFilter, InSlotFilter, BatteryFilter)
    search_fields = (
        "serial_number",
        "current_station__serial_number",
        "current_station__station_name",
    )
    readonly_fields = POWER_BANK_SYNC_FIELDS
    actions = ("rent_out", "eject_for_maintenance_action")
    list_per_page = 100

    class Media:
        css = ADMIN_MEDIA_CSS

    def get_fieldsets(self, request, obj=None):
        operator = (
            "Operator-owned",
            {"fields": ("model", "capacity_mah"), "description": "A sync never overwrites these."},
        )
        if obj is None:
            return [("Power bank", {"fields": ("serial_number",)}), operator]
        return [("Reported by the cabinets (read-only)", {"fields": POWER_BANK_SYNC_FIELDS}), operator]

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else POWER_BANK_SYNC_FIELDS

    @admin.display(description="Status", ordering="status")
    def status_display(self, bank):
        return choice_badge(bank.status, PowerBankStatus, POWER_BANK_STATUS_TONE)

    @admin.display(description="Battery", ordering="battery_level")
    def battery_display(self, bank):
        return battery_meter(bank.battery_level)

    @admin.display(description="Slot", ordering="current_slot__slot_number")
    def slot_number(self, bank):
        return bank.current_slot.slot_number if bank.current_slot_id else "-"

    @admin.display(description="Station")
    def station_link(self, bank):
        return admin_link(bank.current_station)

    @admin.display(description="Hardware info")
    def hardware_info_display(self, bank):
        return pre(pretty_json(bank.hardware_info)) if bank.hardware_info else "-"

    @admin.display(description="Recent rentals")
    def recent_rentals(self, bank):
        rentals = recent_rentals_of_bank(bank, 10)
        if not rentals:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    admin_link(rental, rental.rental_code),
                    rental.user,
                    rental.get_status_display(),
                    rental.started_at.strftime("%Y-%m-%d %H:%M"),
                    rental.ended_at.strftime("%Y-%m-%d %H:%M") if rental.ended_at else "-",
                )
                for rental in rentals
            ),
        )
        return format_html(
            '<table class="cg-table"><thead><tr><th>Code</th><th>Customer</th><th>Status</th>'
            "<th>Started</th><th>Ended</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.action(description="Rent out to a customer…", permissions=["view"])
    def rent_out(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(request, "Select exactly one power bank to rent out.", messages.WARNING)
            return None
        url = reverse("admin:rentals_rental_add") + "?" + urlencode({"power_bank": ids[0]})
        return HttpResponseRedirect(url)

    @admin.action(description="Eject for maintenance (ask the cabinet)", permissions=["change"])
    def eject_for_maintenance_action(self, request, queryset):
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_CABINETS_PER_ACTION + 1])
        if len(ids) > MAX_CABINETS_PER_ACTION:
            self.message_user(
                request, f"Select at most {MAX_CABINETS_PER_ACTION} banks: each may take 15 s.", messages.WARNING
            )
            return
        for bank_id in ids:
            try:
                done = eject_for_maintenance(bank_id)
            except Conflict as exc:
                self.message_user(request, exc.message, messages.WARNING)
                continue
            tone = {"EJECTED": messages.SUCCESS, "REFUSED": messages.ERROR}.get(done.ejection.outcome, messages.WARNING)
            self.message_user(request, done.summary, tone)


# --- Status history --------------------------------------------------------------------------


@admin.register(StationStatusHistory)
class StationStatusHistoryAdmin(admin.ModelAdmin):
    list_display = ("changed_at", "station", "transition", "time_in_previous", "trigger")
    list_select_related = ("station",)
    list_filter = ("trigger", "status", "previous_status")
    search_fields = ("station__serial_number", "station__station_name")
    date_hierarchy = "changed_at"
    list_per_page = 100
    show_full_result_count = False

    class Media:
        css = ADMIN_MEDIA_CSS

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # History is evidence; only a superuser may remove it (deleting a station does).
        return request.user.is_active and request.user.is_superuser

    @admin.display(description="Change")
    def transition(self, row):
        return format_html(
            "{} → {}",
            row.get_previous_status_display() or "-",
            choice_badge(row.status, StationStatus, STATION_STATUS_TONE),
        )

    @admin.display(description="Time in previous status", ordering="seconds_in_previous_status")
    def time_in_previous(self, row):
        return duration(row.seconds_in_previous_status)


# --- The IoT event log -----------------------------------------------------------------------


class MessageTypeFilter(ConditionFilter):
    # Fixed choices: the default filter would SELECT DISTINCT over the whole event log.
    title = "message type"
    parameter_name = "message_type"

    def conditions(self):
        return {kind: (kind, Q(message_type=kind)) for kind in ("full", "returned", "status")}


class OutcomeFilter(ConditionFilter):
    title = "outcome"
    parameter_name = "outcome"

    def conditions(self):
        # `outcome` has no index (the settle of every row would then not be a HOT update):
        # failed rows are found by `failed_at`'s; the others are most of a day's rows.
        dated = {IoTEventOutcome.FAILED: Q(failed_at__isnull=False)}
        return {value: (label, Q(outcome=value) & dated.get(value, Q())) for value, label in IoTEventOutcome.choices}


class FailedFilter(ConditionFilter):
    title = "failure"
    parameter_name = "failed"

    def conditions(self):
        return {"yes": ("Failed (FAILED or HTTP 5xx)", failed_events_q())}


class ReceivedWithinFilter(ConditionFilter):
    title = "received"
    parameter_name = "within"

    def conditions(self):
        now = timezone.now()
        return {
            "1h": ("Last hour", Q(received_at__gte=now - timedelta(hours=1))),
            "24h": ("Last 24 hours", Q(received_at__gte=now - timedelta(hours=24))),
            "7d": ("Last 7 days", Q(received_at__gte=now - timedelta(days=7))),
        }


EVENT_FIELDS = (
    "received_at",
    "outcome_display",
    "message_type",
    "station_link",
    "source_ip_display",
    "body_sha256",
    "body_size_display",
    "duplicate_of_link",
    "http_status_display",
    "duration_display",
    "attempts",
    "processed_at",
    "failed_at",
    "payload_display",
    "raw_body_display",
    "response_display",
    "error_display",
)


@admin.register(IoTEvent)
class IoTEventAdmin(admin.ModelAdmin):
    """Read-only: the log is evidence. Only superusers may delete rows."""

    list_display = (
        "id",
        "received_at",
        "outcome_display",
        "message_type",
        "station_serial",
        "http_status_display",
        "duration_display",
        "duplicate_of_display",
    )
    list_display_links = ("id", "received_at")
    list_filter = (OutcomeFilter, MessageTypeFilter, FailedFilter, ReceivedWithinFilter)
    search_fields = ("=station_serial", "^body_sha256")
    date_hierarchy = "received_at"
    fields = EVENT_FIELDS
    readonly_fields = EVENT_FIELDS
    actions = ("reprocess_selected",)
    list_per_page = 100
    # Counting the whole log on every page view is the slowest part on a big table.
    show_full_result_count = False

    class Media:
        css = ADMIN_MEDIA_CSS

    def get_queryset(self, request):
        # The list never shows the bodies: do not fetch them.
        queryset = super().get_queryset(request)
        url_name = request.resolver_match.url_name if request.resolver_match else ""
        if url_name and url_name.endswith("changelist"):
            queryset = queryset.defer("payload", "raw_body", "response", "error")
        return queryset

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_reprocess_permission(self, request):
        # The log itself is read-only; re-processing is what "change" permits here.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def get_fields(self, request, obj=None):
        source = self.body_row(obj) if obj is not None else None
        if obj is not None and not (source and source.raw_body):
            return tuple(name for name in self.fields if name != "raw_body_display")
        return self.fields

    @staticmethod
    def body_row(event) -> IoTEvent | None:
        """
        The row that keeps the body: a repeat's first delivery, else the row itself. None
        for a repeat whose first delivery is gone (dropped with its day by retention).
        """
        if not event.duplicate_of_id:
            return event
        try:
            return event.duplicate_of
        except IoTEvent.DoesNotExist:
            return None

    @staticmethod
    def gone(event) -> str:
        return format_html(
            "-<p>Kept with the first delivery, #{}, which is no longer in the log.</p>", event.duplicate_of_id
        )

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_display(self, event):
        return choice_badge(event.outcome, IoTEventOutcome, OUTCOME_TONE)

    @admin.display(description="HTTP", ordering="http_status")
    def http_status_display(self, event):
        return event.http_status if event.http_status is not None else "-"

    @admin.display(description="Duration (ms)", ordering="duration_ms")
    def duration_display(self, event):
        return f"{event.duration_ms:.1f}" if event.duration_ms is not None else "-"

    @admin.display(description="Source IP")
    def source_ip_display(self, event):
        return event.source_ip or "-"

    @admin.display(description="Duplicate of", ordering="duplicate_of")
    def duplicate_of_display(self, event):
        if not event.duplicate_of_id:
            return "-"
        url = reverse("admin:stations_iotevent_change", args=[event.duplicate_of_id])
        return format_html('<a href="{}">#{}</a>', url, event.duplicate_of_id)

    @admin.display(description="Duplicate of")
    def duplicate_of_link(self, event):
        return self.duplicate_of_display(event)

    @admin.display(description="Station")
    def station_link(self, event):
        if not event.station_serial:
            return "-"
        station = station_by_serial(event.station_serial)
        if station is None:
            return event.station_serial
        return admin_link(station)

    @admin.display(description="Size")
    def body_size_display(self, event):
        return f"{event.body_bytes:,} bytes" if event.body_bytes is not None else "-"

    @admin.display(description="Payload")
    def payload_display(self, event):
        # A repeat keeps no copy of the body: show its first delivery's, and say so.
        source = self.body_row(event)
        if source is None:
            return self.gone(event)
        if source.payload is None:
            return "-"
        shown = pre(pretty_json(source.payload))
        if source is event:
            return shown
        return format_html("{}<p>Kept with the first delivery, #{}.</p>", shown, source.pk)

    @admin.display(description="Raw body (not JSON)")
    def raw_body_display(self, event):
        source = self.body_row(event)
        if source is None:
            return self.gone(event)
        if source is event:
            return pre(event.raw_body)
        return format_html("{}<p>Kept with the first delivery, #{}.</p>", pre(source.raw_body), source.pk)

    @admin.display(description="Response")
    def response_display(self, event):
        try:
            data = event.response_data
        except ValueError:
            return pre(event.response)
        return pre(pretty_json(data)) if data is not None else "-"

    @admin.display(description="Error")
    def error_display(self, event):
        return pre(event.error)

    @admin.action(description="Re-process selected", permissions=["reprocess"])
    def reprocess_selected(self, request, queryset):
        # In order of receipt, as the command does; with the bodies the list left out.
        selected = list(
            IoTEvent.objects.filter(pk__in=queryset.values("pk"))
            .select_related("duplicate_of")
            .order_by("received_at", "id")[: MAX_REPROCESS_PER_ACTION + 1]
        )
        if len(selected) > MAX_REPROCESS_PER_ACTION:
            self.message_user(
                request,
                f"Select at most {MAX_REPROCESS_PER_ACTION} events; for more use "
                "`manage.py reprocess_iot_events --failed`.",
                messages.WARNING,
            )
            return
        for event in selected:
            if event.duplicate_of_id and event.duplicate_of is None:
                # select_related found no row: the first delivery, with the body, is gone.
                self.message_user(
                    request,
                    f"event {event.pk}: not re-processed, its first delivery (#{event.duplicate_of_id}, "
                    "which has the body) is no longer in the log",
                    messages.WARNING,
                )
                continue
            report = reprocess(event)
            ok = report.outcome in (IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE)
            target = f"event {event.pk}" + (
                f" (body of event {report.event_id})" if report.event_id != event.pk else ""
            )
            self.message_user(
                request,
                f"{target}: {report.outcome} (HTTP {report.http_status}) {report.message}",
                messages.SUCCESS if ok else messages.WARNING,
            )
