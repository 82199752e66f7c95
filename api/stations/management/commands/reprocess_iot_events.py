from django.core.management.base import BaseCommand, CommandError

from api.stations.ingest.delivery import reprocess
from api.stations.models import IoTEvent, IoTEventOutcome


class Command(BaseCommand):
    help = (
        "Run logged IoT messages through processing again: every FAILED body (--failed) or "
        "the given event ids (--ids). Bodies already processed are reported and left alone."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--failed", action="store_true", help="every event whose outcome is FAILED")
        group.add_argument("--ids", nargs="+", type=int, metavar="ID", help="these event ids")
        parser.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")

    def handle(self, *args, failed=False, ids=None, limit=1000, **options):
        if failed:
            # `failed_at` is indexed (only failed rows have it); `outcome` is not.
            selected = IoTEvent.objects.filter(
                failed_at__isnull=False, outcome=IoTEventOutcome.FAILED, duplicate_of__isnull=True
            ).order_by("received_at", "id")[:limit]
        else:
            selected = IoTEvent.objects.filter(pk__in=ids).order_by("received_at", "id")
            missing = set(ids) - set(selected.values_list("pk", flat=True))
            if missing:
                raise CommandError(f"No such event: {', '.join(map(str, sorted(missing)))}")
        selected = list(selected)
        if not selected:
            self.stdout.write("Nothing to re-process.")
            return
        counts: dict[str, int] = {}
        for event in selected:
            if event.duplicate_of_id and not IoTEvent.objects.filter(pk=event.duplicate_of_id).exists():
                # A repeat whose first delivery (with the body) was dropped with its day.
                counts["GONE"] = counts.get("GONE", 0) + 1
                self.stdout.write(
                    f"event {event.pk}: not re-processed, its first delivery "
                    f"#{event.duplicate_of_id} (with the body) is no longer in the log"
                )
                continue
            report = reprocess(event)
            counts[report.outcome] = counts.get(report.outcome, 0) + 1
            self.stdout.write(
                f"event {event.pk}: {report.outcome} (HTTP {report.http_status}) {report.message}"
            )
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        self.stdout.write(self.style.SUCCESS(f"Re-processed {len(selected)} event(s): {summary}"))
