from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from api.stations.models import IoTEvent, IoTEventOutcome

# Kept whatever their age: an operator still has to look at them.
KEPT_OUTCOMES = (IoTEventOutcome.FAILED, IoTEventOutcome.RECEIVED)


class Command(BaseCommand):
    help = (
        "Delete logged IoT messages older than --days, row by row, keeping failed ones (and "
        "their retries). Replaced for daily use by maintain_iot_events, which on PostgreSQL "
        "drops whole days instead; kept for one-off clean-ups."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, required=True, help="keep this many days")
        parser.add_argument("--dry-run", action="store_true", help="count only")

    def handle(self, *args, days, dry_run=False, **options):
        if days < 0:
            raise CommandError("--days must be 0 or more")
        cutoff = timezone.now() - timedelta(days=days)
        old = IoTEvent.objects.filter(received_at__lt=cutoff).exclude(
            Q(outcome__in=KEPT_OUTCOMES) | Q(duplicate_of__outcome__in=KEPT_OUTCOMES)
        )
        # Duplicates of a body still kept stay with it; a pruned primary takes its
        # duplicates along (ON DELETE CASCADE), old or not, which is what we want.
        if connection.vendor == "postgresql":
            self.stdout.write(
                "Note: maintain_iot_events replaces this command for daily retention "
                "(it drops whole days of the partitioned log); this one deletes row by row."
            )
        count = old.count()
        if dry_run:
            self.stdout.write(f"Would delete {count} event(s) received before {cutoff.isoformat()}.")
            return
        deleted, _ = old.delete()
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} event row(s) received before {cutoff.isoformat()}.")
        )
