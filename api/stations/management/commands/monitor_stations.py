from django.core.management.base import BaseCommand

from api.stations.services.status import monitor


class Command(BaseCommand):
    help = (
        "Liveness pass, meant to run every minute (cron or the compose `monitor` service): "
        "stations silent longer than IOT_OFFLINE_AFTER_MINUTES go OFFLINE (with history, "
        "trigger TIMEOUT) and ACTIVE rentals past their due time go OVERDUE."
    )

    def handle(self, *args, **options):
        result = monitor()
        offline = result.stations_marked_offline
        self.stdout.write(
            f"{len(offline)} station(s) marked OFFLINE"
            + (f": {', '.join(offline)}" if offline else "")
            + f"; {result.rentals_marked_overdue} rental(s) marked OVERDUE"
        )
