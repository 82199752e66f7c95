"""
A stand-in for the IoT system inside one process, for tests that are not about it.

The test settings use `InstantCabinet` (IOT_SYSTEM_API_CLIENT): every ejection succeeds at
once, so a rental a test starts is ACTIVE from the moment it asked, as before ejections
existed. The tests of the ejection itself talk to the simulator's API over real HTTP
(`iot_tools.simulator.IoTApiServer`) with the real client.
"""

from api.iot_system.client import EjectOutcome, EjectResult, InventoryOutcome, InventoryResult, SlotReport


class InstantCabinet:
    """Ejects whatever it is asked to at once; inventories are what the database records."""

    @classmethod
    def from_settings(cls) -> "InstantCabinet":
        return cls()

    def popup(self, station_serial: str, bank_serial: str) -> EjectResult:
        return EjectResult(
            outcome=EjectOutcome.EJECTED,
            station_serial=station_serial,
            bank_serial=bank_serial,
            message="ejected (test cabinet)",
            http_status=200,
            cabinet_status=1,
        )

    def check(self, station_serial: str) -> InventoryResult:
        return self.check_all(station_serial)

    def check_all(self, station_serial: str) -> InventoryResult:
        from api.stations.models import PowerBank

        banks = PowerBank.objects.filter(
            current_station__serial_number=station_serial, current_slot__isnull=False
        ).values_list("serial_number", "current_slot__slot_number", "battery_level")
        slots = tuple(
            SlotReport(slot=slot, bank_serial=serial, battery=battery, status=1, message="OK")
            for serial, slot, battery in sorted(banks, key=lambda row: row[1])
        )
        return InventoryResult(
            outcome=InventoryOutcome.OK,
            station_serial=station_serial,
            message=f"{len(slots)} bank(s) (test cabinet)",
            slots=slots,
            http_status=200,
        )

    def close(self) -> None:
        pass
