"""
Rentals and rental packages in the operators' admin.

A rental is a money record written only by `RentalService`: the admin shows rentals
read-only, and its "add" page is a small "start a rental" form that calls
`RentalService.start_rental`: the cabinet is asked to eject the bank, and the page says
what it answered (ejected: the rental runs; refused: cancelled; no answer: the rental waits
in PENDING_POPUP for the cabinet's next report).
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.admin.widgets import AutocompleteSelect
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from api.iot_system.client import EjectOutcome
from api.rentals.models import BANK_TAKEN_STATUSES, PaymentStatus, Rental, RentalPackage, RentalStatus
from api.rentals.selectors import active_packages, overdue_rentals_q, past_due
from api.rentals.services.rental_service import RentalService
from api.stations.models import PowerBank
from api.stations.selectors import rentable_power_banks, rentable_power_banks_q
from main_app.admin_display import ADMIN_MEDIA_CSS, admin_link, badge, choice_badge
from main_app.admin_filters import ConditionFilter
from main_app.exceptions import Conflict

RENTAL_STATUS_TONE = {
    RentalStatus.PENDING: "muted",
    RentalStatus.PENDING_POPUP: "warn",
    RentalStatus.ACTIVE: "info",
    RentalStatus.OVERDUE: "bad",
    RentalStatus.COMPLETED: "ok",
    RentalStatus.CANCELLED: "muted",
}
PAYMENT_STATUS_TONE = {
    PaymentStatus.PENDING: "warn",
    PaymentStatus.PAID: "ok",
    PaymentStatus.FAILED: "bad",
    PaymentStatus.REFUNDED: "muted",
}


class OverdueFilter(ConditionFilter):
    title = "overdue"
    parameter_name = "overdue"

    def conditions(self):
        overdue = overdue_rentals_q(timezone.now())
        return {
            "yes": ("Overdue (OVERDUE, or ACTIVE past due)", overdue),
            "no": ("Not overdue", ~overdue),
        }


def bank_label(bank: PowerBank) -> str:
    """What an operator needs to pick a bank: serial, charge and where it sits."""
    where = (
        f"{bank.current_station.station_name} slot {bank.current_slot.slot_number}"
        if bank.current_slot_id
        else "not in a slot"
    )
    return f"{bank.serial_number} · {bank.battery_level}% · {where}"


def not_taken(queryset):
    """Without the banks a rental has taken (one whose ejection is still under way included)."""
    return queryset.exclude(rentals__status__in=BANK_TAKEN_STATUSES)


class RentableBankAutocomplete(AutocompleteJsonView):
    """The bank picker's search: rentable banks only, fullest first, labelled with their place."""

    def get_queryset(self):
        return (
            not_taken(super().get_queryset().filter(rentable_power_banks_q()))
            .select_related("current_station", "current_slot")
            .order_by("-battery_level", "serial_number")
        )

    def serialize_result(self, obj, to_field_name):
        return {"id": str(getattr(obj, to_field_name)), "text": bank_label(obj)}


class BankPicker(AutocompleteSelect):
    def get_url(self):
        return reverse(f"{self.admin_site.name}:rentals_rental_bank_autocomplete")


class BankChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return bank_label(obj)


class StartRentalForm(forms.Form):
    customer_email = forms.EmailField(
        label="Customer email", help_text="The customer's account email address."
    )
    power_bank = BankChoiceField(
        queryset=PowerBank.objects.none(),
        error_messages={
            "invalid_choice": "This power bank cannot be rented now: it is not AVAILABLE in a slot, or a rental is ejecting it."
        },
        help_text="Only banks that are AVAILABLE and sit in a slot can be rented. "
        "Type part of the serial number or the station's name.",
    )
    package = forms.ModelChoiceField(queryset=RentalPackage.objects.none())

    def __init__(self, *args, admin_site, **kwargs):
        super().__init__(*args, **kwargs)
        bank_field = self.fields["power_bank"]
        # A search box, not a <select> of every bank in the fleet. (The widget first: setting
        # the queryset hands the choices to the widget.)
        bank_field.widget = BankPicker(Rental._meta.get_field("power_bank"), admin_site)
        bank_field.queryset = not_taken(rentable_power_banks())
        self.fields["package"].queryset = active_packages()
        if not self.is_bound:
            # Offer a sole package preselected rather than "---------".
            packages = list(self.fields["package"].queryset[:2])
            if len(packages) == 1:
                self.initial.setdefault("package", packages[0].pk)

    def clean_customer_email(self):
        email = self.cleaned_data["customer_email"]
        customer = get_user_model().objects.filter(email__iexact=email).first()
        if customer is None:
            raise forms.ValidationError("No customer has this email address.")
        if not customer.is_active:
            raise forms.ValidationError("This customer's account is deactivated.")
        self.cleaned_data["customer"] = customer
        return email


def start_message(rental: Rental) -> tuple[str, int]:
    """What the operator is told after a start: the cabinet's answer and what it made of the rental."""
    bank, station = rental.power_bank.serial_number, rental.station.serial_number if rental.station else "-"
    said = f"Station {station} answered: {rental.ejection_message}."
    if rental.status in (RentalStatus.ACTIVE, RentalStatus.OVERDUE):
        return (
            f"Rental {rental.rental_code} started: power bank {bank} to {rental.user.email} on "
            f"{rental.package.name}, due {timezone.localtime(rental.due_at):%Y-%m-%d %H:%M}. {said}",
            messages.SUCCESS,
        )
    if rental.status == RentalStatus.CANCELLED and rental.ejection_outcome == EjectOutcome.REFUSED:
        return (
            f"Rental {rental.rental_code} cancelled, nothing charged: station {station} did not eject "
            f"power bank {bank}. {said}",
            messages.ERROR,
        )
    if rental.status == RentalStatus.PENDING_POPUP:
        return (
            f"Rental {rental.rental_code} is waiting for station {station} ({rental.ejection_outcome}): "
            f"{rental.ejection_message}. The ejection is not sent again: the cabinet's next full sync, or "
            f"the inventory monitor_stations asks for after {settings.IOT_POPUP_GRACE_SECONDS} s, shows "
            f"whether power bank {bank} left (the rental then runs from the request) or not (it is cancelled).",
            messages.WARNING,
        )
    return (f"Rental {rental.rental_code} is {rental.get_status_display()}: {rental.ejection_message}.", messages.INFO)


@admin.register(Rental)
class RentalAdmin(admin.ModelAdmin):
    list_display = (
        "rental_code",
        "customer",
        "power_bank",
        "package",
        "status_display",
        "started_at",
        "due_at",
        "ended_at",
        "on_time",
        "charges_total",
        "payment_display",
    )
    list_select_related = ("user", "power_bank", "package")
    list_filter = ("status", OverdueFilter, "payment_status", "package")
    search_fields = ("=rental_code", "user__email", "power_bank__serial_number")
    date_hierarchy = "started_at"
    list_per_page = 100
    fieldsets = [
        (
            "Rental",
            {"fields": ("rental_code", "customer_link", "power_bank_link", "package", "status_display")},
        ),
        ("Time", {"fields": ("started_at", "due_at", "ended_at", "on_time")}),
        ("Stations", {"fields": ("station_link", "return_station_link", "return_battery_level")}),
        (
            "Ejection (what the cabinet said)",
            {"fields": ("ejection_requested_at", "ejection_outcome", "ejection_message")},
        ),
        (
            "Money (computed by the rental service)",
            {"fields": ("base_amount", "overdue_amount", "charges_total", "payment_display")},
        ),
        ("Record", {"fields": ("id", "created_at", "updated_at")}),
    ]
    readonly_fields = (
        "rental_code",
        "customer_link",
        "power_bank_link",
        "package",
        "status_display",
        "started_at",
        "due_at",
        "ended_at",
        "on_time",
        "station_link",
        "return_station_link",
        "return_battery_level",
        "ejection_requested_at",
        "ejection_outcome",
        "ejection_message",
        "base_amount",
        "overdue_amount",
        "charges_total",
        "payment_display",
        "id",
        "created_at",
        "updated_at",
    )

    class Media:
        css = ADMIN_MEDIA_CSS

    def get_queryset(self, request):
        # No select_related here: it would replace list_select_related on the changelist.
        return super().get_queryset(request).annotate(charges=F("base_amount") + F("overdue_amount"))

    # Every write to a rental goes through RentalService: no editing, no deleting here.
    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Customer", ordering="user__email")
    def customer(self, rental):
        return rental.user.email or rental.user

    @admin.display(description="Customer")
    def customer_link(self, rental):
        return admin_link(rental.user, rental.user.email or str(rental.user))

    @admin.display(description="Power bank")
    def power_bank_link(self, rental):
        return admin_link(rental.power_bank)

    @admin.display(description="Start station")
    def station_link(self, rental):
        return admin_link(rental.station)

    @admin.display(description="Return station")
    def return_station_link(self, rental):
        return admin_link(rental.return_station)

    @admin.display(description="Status", ordering="status")
    def status_display(self, rental):
        if past_due(rental, timezone.now()):
            return format_html(
                "{} {}",
                choice_badge(rental.status, RentalStatus, RENTAL_STATUS_TONE),
                badge("past due", "bad"),
            )
        return choice_badge(rental.status, RentalStatus, RENTAL_STATUS_TONE)

    @admin.display(description="Payment", ordering="payment_status")
    def payment_display(self, rental):
        return choice_badge(rental.payment_status, PaymentStatus, PAYMENT_STATUS_TONE)

    @admin.display(description="On time", boolean=True, ordering="is_returned_on_time")
    def on_time(self, rental):
        # Unknown until the bank is back.
        return rental.is_returned_on_time if rental.ended_at else None

    @admin.display(description="Charges total", ordering="charges")
    def charges_total(self, rental):
        return rental.total_amount

    # "Add" is "start a rental" through the service.

    def get_urls(self):
        picker = path(
            "bank-autocomplete/",
            self.admin_site.admin_view(RentableBankAutocomplete.as_view(admin_site=self.admin_site)),
            name="rentals_rental_bank_autocomplete",
        )
        return [picker, *super().get_urls()]

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = StartRentalForm(request.POST, admin_site=self.admin_site)
            if form.is_valid():
                try:
                    rental = RentalService.start_rental(
                        user=form.cleaned_data["customer"],
                        power_bank=form.cleaned_data["power_bank"],
                        package=form.cleaned_data["package"],
                    )
                except Conflict as exc:
                    form.add_error(None, exc.message)
                else:
                    self.log_addition(request, rental, [{"added": {}}])
                    self.message_user(request, *start_message(rental))
                    return HttpResponseRedirect(reverse("admin:rentals_rental_change", args=[rental.pk]))
        else:
            initial = {}
            if request.GET.get("power_bank", "").isdigit():
                initial["power_bank"] = int(request.GET["power_bank"])
            form = StartRentalForm(initial=initial, admin_site=self.admin_site)

        context = {
            **self.admin_site.each_context(request),
            "title": "Start a rental",
            "popup_timeout": f"{settings.IOT_SYSTEM_API_POPUP_TIMEOUT:g}",
            "subtitle": None,
            "opts": self.opts,
            "form": form,
            "media": self.media + form.media,
            "has_view_permission": self.has_view_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/rentals/rental/start_rental.html", context)


@admin.register(RentalPackage)
class RentalPackageAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "duration_minutes",
        "price",
        "payment_model",
        "late_multiplier",
        "grace_minutes",
        "is_active",
    )
    list_filter = ("is_active", "payment_model")
    search_fields = ("name",)
