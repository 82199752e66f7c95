"""
The event log's rows are found by `failed_at`, not by `outcome`, so that the UPDATE that
settles every delivery's row can be a HOT one on PostgreSQL (no new index entries, the old
version pruned from its page without VACUUM): that UPDATE changes `outcome`, and it was
indexed (`iot_event_outcome_idx`, for the admin's and `reprocess_iot_events`' lookups of
failed rows). `failed_at` is written only when an attempt fails, so its partial index is
small and untouched by every other settle (docs/performance.md, "Ninth pass").

Existing failed rows get the time they were processed or received. Each day's partition
leaves room on its pages for the settled versions of its rows (`event_partitions.FILLFACTOR`);
new partitions are created so, this sets the ones that exist (their pages already written
stay as they are). PostgreSQL only for that part: SQLite has no fill factor.
"""

from django.db import migrations, models
from django.db.models import Q
from django.db.models.functions import Coalesce

from api.stations.ingest import event_partitions

FAILED = Q(outcome="FAILED") | Q(http_status__gte=500)


def date_failures(apps, schema_editor):
    IoTEvent = apps.get_model("stations", "IoTEvent")
    IoTEvent.objects.filter(FAILED, failed_at__isnull=True).update(failed_at=Coalesce("processed_at", "received_at"))


def _fillfactor(schema_editor, value: int | None) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        for part in event_partitions.partitions(cursor):
            if value is None:
                cursor.execute(f"ALTER TABLE {quote(part.name)} RESET (fillfactor)")
            else:
                cursor.execute(f"ALTER TABLE {quote(part.name)} SET (fillfactor = {int(value)})")


def leave_room(apps, schema_editor):
    _fillfactor(schema_editor, event_partitions.FILLFACTOR)


def pack_full(apps, schema_editor):
    _fillfactor(schema_editor, None)


class Migration(migrations.Migration):
    dependencies = [("stations", "0011_event_body_out_of_row")]

    operations = [
        migrations.AddField(
            model_name="iotevent",
            name="failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(date_failures, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="iotevent",
            constraint=models.CheckConstraint(
                condition=Q(failed_at__isnull=False)
                | (~Q(outcome="FAILED") & (Q(http_status__isnull=True) | Q(http_status__lt=500))),
                name="iot_event_failure_dated",
            ),
        ),
        migrations.RemoveIndex(model_name="iotevent", name="iot_event_outcome_idx"),
        migrations.AddIndex(
            model_name="iotevent",
            index=models.Index(
                fields=["failed_at"], name="iot_event_failed_at_idx", condition=Q(failed_at__isnull=False)
            ),
        ),
        migrations.RunPython(leave_room, pack_full),
    ]
