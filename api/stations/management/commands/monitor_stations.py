from django.core.management.base import BaseCommand

from api.stations.services.status import monitor


class Command(BaseCommand):
    help = (
        "Liveness pass, meant to run every minute (cron or the compose `monitor` service): "
        "stations silent longer than IOT_OFFLINE_AFTER_MINUTES go OFFLINE (with history, "
        "trigger TIMEOUT), ACTIVE rentals past their due time go OVERDUE, and the cabinets of "
        "ejections pending longer than IOT_POPUP_GRACE_SECONDS are asked for an inventory "
        "(the IoT system's /check_all) that settles them."
    )

    def handle(self, *args, **options):
        result = monitor()
        offline = result.stations_marked_offline
        self.stdout.write(
            f"{len(offline)} station(s) marked OFFLINE"
            + (f": {', '.join(offline)}" if offline else "")
            + f"; {result.rentals_marked_overdue} rental(s) marked OVERDUE"
        )
        for check in result.ejection_checks:
            settled = check.settlement
            line = f"Station {check.station.serial_number}: inventory {check.inventory.outcome} ({check.inventory.message})"
            if check.inventory.ok:
                line += (
                    f"; {len(settled.activated)} ejection(s) confirmed, {len(settled.cancelled)} cancelled, "
                    f"{len(settled.still_pending)} still pending"
                )
            else:
                line += f"; {len(settled.still_pending)} ejection(s) still pending"
            self.stdout.write(line)
