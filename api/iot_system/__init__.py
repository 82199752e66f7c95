"""
The other direction: this service calling the Java IoT system's HTTP API (docs/contract.md,
"The other direction: ejecting a bank"). Not an app: no models, only a client that both the
rentals and the stations app use, built from Django settings.
"""

from api.iot_system.client import (
    EjectOutcome,
    EjectResult,
    InventoryOutcome,
    InventoryResult,
    IoTSystemClient,
    SlotReport,
    get_client,
    reset_client,
)

__all__ = [
    "EjectOutcome",
    "EjectResult",
    "InventoryOutcome",
    "InventoryResult",
    "IoTSystemClient",
    "SlotReport",
    "get_client",
    "reset_client",
]
