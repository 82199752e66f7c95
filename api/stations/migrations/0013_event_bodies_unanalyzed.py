"""
No planner statistics on the event log's body, answer and error: nothing filters on them,
and sampling them was about a quarter of every ANALYZE of a day's partition
(`event_partitions.UNANALYZED_COLUMNS` says why). New partitions are created so; this sets
the table and the partitions that exist (ALTER TABLE on the partitioned table reaches every
partition). PostgreSQL only: SQLite keeps no per-column statistics targets.
"""

from django.db import migrations

from api.stations.ingest import event_partitions


def unanalyzed(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        event_partitions.set_statistics(cursor, event_partitions.TABLE)


def analyzed(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        event_partitions.set_statistics(cursor, event_partitions.TABLE, -1)


class Migration(migrations.Migration):
    dependencies = [("stations", "0012_event_failed_at")]

    operations = [migrations.RunPython(unanalyzed, analyzed)]
