import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from api.stations.ingest import event_partitions


class Command(BaseCommand):
    help = (
        "Daily upkeep of the IoT event log: on PostgreSQL create the next days' partitions, "
        "move rows the DEFAULT partition caught into their days, trim the payloads of days "
        "older than IOT_EVENT_PAYLOAD_DAYS and drop the days older than IOT_EVENT_KEEP_DAYS "
        "whole; elsewhere the same retention by UPDATE and DELETE. One line per thing done."
    )

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=7, help="create partitions this many days ahead (default 7)")
        parser.add_argument("--payload-days", type=int, help="default: IOT_EVENT_PAYLOAD_DAYS")
        parser.add_argument("--keep-days", type=int, help="default: IOT_EVENT_KEEP_DAYS")
        parser.add_argument("--no-trim", action="store_true", help="do not trim payloads this time")
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")

    def handle(self, *args, ahead=7, payload_days=None, keep_days=None, no_trim=False, dry_run=False, **options):
        payload_days = settings.IOT_EVENT_PAYLOAD_DAYS if payload_days is None else payload_days
        keep_days = settings.IOT_EVENT_KEEP_DAYS if keep_days is None else keep_days
        if ahead < 0 or payload_days < 0 or keep_days < 1:
            raise CommandError("--ahead and --payload-days must be 0 or more, --keep-days 1 or more")
        if payload_days > keep_days:
            raise CommandError("payloads cannot be kept longer than the rows (--payload-days > --keep-days)")
        started = time.perf_counter()
        lines = event_partitions.maintain(
            ahead=ahead, payload_days=payload_days, keep_days=keep_days, trim=not no_trim, dry_run=dry_run
        )
        for line in lines:
            self.stdout.write(line)
        self.stdout.write(
            self.style.SUCCESS(
                f"event log upkeep done in {(time.perf_counter() - started) * 1000:.0f} ms "
                f"(payloads {payload_days} days, rows {keep_days} days)"
            )
        )
