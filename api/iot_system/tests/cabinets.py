"""
Simulated cabinets behind the IoT system's API over real HTTP, for the tests of the other
direction: the fleet model of iot_tools.simulator and its `IoTApiServer` on 127.0.0.1, an
ephemeral port.
"""

import json
import time

from django.test import override_settings

from api.iot_system.client import IoTSystemClient
from iot_tools.simulator import ApiBehaviour, Fleet, FleetConfig, IoTApiServer

USERNAME = "chargeghar-main"
PASSWORD = "cabinet-api-password-7f3a9c"


def quiet_fleet(*, stations: int = 1, slots: int = 4, start: float | None = None, seed: int = 11) -> Fleet:
    """Cabinets full of charged banks that do nothing by themselves: no takes, faults or flaps."""
    return Fleet(
        FleetConfig(
            stations=stations,
            slots=slots,
            interval=60,
            seed=seed,
            take_probability=0,
            flap_probability=0,
            error_probability=0,
            resend_probability=0,
            stale_probability=0,
            fill=1.0,
        ),
        start=time.time() if start is None else start,
    )


class CabinetApiMixin:
    """`start_cabinets()` in a test: a fleet, its API server, and the settings pointing at it."""

    def start_cabinets(
        self,
        *,
        stations: int = 1,
        slots: int = 4,
        behaviour: ApiBehaviour | None = None,
        popup_timeout: float = 3.0,
        check_timeout: float = 3.0,
    ) -> tuple[Fleet, IoTApiServer]:
        fleet = quiet_fleet(stations=stations, slots=slots)
        server = IoTApiServer(
            fleet, username=USERNAME, password=PASSWORD, behaviour=behaviour or ApiBehaviour(delay=0, check_delay=0)
        ).start()
        self.addCleanup(server.stop)
        settings = override_settings(
            IOT_SYSTEM_API_CLIENT="api.iot_system.client.IoTSystemClient",
            IOT_SYSTEM_API_URL=server.url,
            IOT_SYSTEM_API_USERNAME=USERNAME,
            IOT_SYSTEM_API_PASSWORD=PASSWORD,
            IOT_SYSTEM_API_CONNECT_TIMEOUT=2.0,
            IOT_SYSTEM_API_POPUP_TIMEOUT=popup_timeout,
            IOT_SYSTEM_API_CHECK_TIMEOUT=check_timeout,
        )
        settings.enable()
        self.addCleanup(settings.disable)
        return fleet, server

    @staticmethod
    def full_syncs(fleet: Fleet, until: float) -> list[dict]:
        """The full syncs the fleet's cabinets send up to `until`, as payloads."""
        return [json.loads(m.body) for m in fleet.advance(until) if getattr(m, "message_type", "") == "full"]

    @staticmethod
    def api_client(server: IoTApiServer, **kwargs) -> IoTSystemClient:
        kwargs.setdefault("connect_timeout", 2.0)
        kwargs.setdefault("popup_timeout", 3.0)
        kwargs.setdefault("check_timeout", 3.0)
        return IoTSystemClient(server.url, USERNAME, PASSWORD, **kwargs)


def snapshot(fleet: Fleet, station_serial: str, at: float) -> dict:
    """The full sync the cabinet would send at `at`, from its state now."""
    from iot_tools.simulator import full_payload

    with fleet.lock:
        return full_payload(fleet.station(station_serial), at)
