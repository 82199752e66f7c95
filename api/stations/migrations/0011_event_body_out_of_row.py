"""
The event log's bodies are stored out of their rows (TOAST), so the outcome UPDATE every
delivery's row gets writes a new version of a few hundred bytes instead of another copy of
the compressed body; the answer and the error, which that UPDATE writes, stay in the row
(`event_partitions.TOAST_TUPLE_TARGET` says why, docs/performance.md, "Eighth pass", has
the figures). New partitions are created so; this sets the partitions that exist. Rows
already stored move as they are written again. PostgreSQL only: SQLite has no such storage.
"""

from django.db import migrations

from api.stations.ingest import event_partitions


def out_of_row(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    target = event_partitions.TOAST_TUPLE_TARGET
    with schema_editor.connection.cursor() as cursor:
        event_partitions.set_storage(cursor, event_partitions.TABLE)
        for part in event_partitions.partitions(cursor):
            cursor.execute(f"ALTER TABLE {quote(part.name)} SET (toast_tuple_target = {int(target)})")


def in_row(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        event_partitions.set_storage(cursor, event_partitions.TABLE, "EXTENDED")
        for part in event_partitions.partitions(cursor):
            cursor.execute(f"ALTER TABLE {quote(part.name)} RESET (toast_tuple_target)")


class Migration(migrations.Migration):
    dependencies = [("stations", "0010_hot_table_fillfactor")]

    operations = [migrations.RunPython(out_of_row, in_row)]
