"""A list filter for the admin whose every choice is a query condition."""

from django.contrib import admin
from django.db.models import Q


class ConditionFilter(admin.SimpleListFilter):
    """
    Subclasses return `{value: (label, Q)}` from `conditions()`; it is called per request,
    so a condition may depend on the current time or on settings.
    """

    def conditions(self) -> dict[str, tuple[str, Q]]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return [(value, label) for value, (label, _) in self.conditions().items()]

    def queryset(self, request, queryset):
        chosen = self.conditions().get(self.value())
        return queryset if chosen is None else queryset.filter(chosen[1])
