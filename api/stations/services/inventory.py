"""
Moves of power banks that no station message reports: a bank handed to a customer.

The stations app owns slot and bank rows; other apps move banks through here. The caller
holds the station's and the bank's row locks (docs/design.md, lock order).
"""

from datetime import datetime

from api.stations.models import PowerBank, PowerBankStatus, SlotStatus, StationSlot


def take_out_for_rental(bank: PowerBank, *, now: datetime) -> None:
    """The bank leaves its slot (now AVAILABLE) and its station, and is RENTED."""
    if bank.current_slot_id:
        StationSlot.objects.filter(pk=bank.current_slot_id, status=SlotStatus.OCCUPIED).update(
            status=SlotStatus.AVAILABLE, battery_level=0, updated_at=now
        )
    PowerBank.objects.filter(pk=bank.pk).update(
        status=PowerBankStatus.RENTED, current_slot=None, current_station=None, updated_at=now
    )
