"""
The event log partitioned by day of receipt on PostgreSQL (docs/decisions.md, "The event log
is partitioned by day"). SQLite keeps its plain table.

A partitioned table's primary key and unique indexes must include the partition key, so on
PostgreSQL the table's key is (id, received_at) while Django keeps `id` as the model's
primary key (ids come from one sequence, so they stay unique); the digest's uniqueness
among first deliveries is one unique index per day, and across days the INSERT's lookup
(`stations_iotevent_primary`, under an advisory lock on the digest). No foreign key can
point at a partitioned table without a unique key on `id` alone, so `duplicate_of` loses
its constraint (on every database, for one behaviour): a repeat can outlive its first
delivery's day.

Forward on PostgreSQL: the old table is set aside, the partitioned one created like it
(columns, defaults, checks, identity), its days created (every day that has rows, today
and the next 7) with the DEFAULT partition, the rows moved, the sequence carried on, the
old table dropped. Backward: a plain table again, rows moved back; repeats whose first
delivery is gone are deleted (the old table's foreign key does not allow them).
One transaction either way; it reads and writes the whole log once.
"""

from datetime import timedelta

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

TABLE = "stations_iotevent"
ASIDE = "stations_iotevent_unpartitioned"
PARTITIONED_ASIDE = "stations_iotevent_partitioned"
FUNCTION = "stations_iotevent_primary"

# A volatile function reads with a snapshot of its own, taken after the lock: two
# deliveries of one body, at the same time on either side of midnight (two partitions, no
# shared unique index), wait for each other here and the second sees the first's row.
CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(digest text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    primary_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(digest, 16));
    SELECT id INTO primary_id FROM {TABLE}
     WHERE body_sha256 = digest AND duplicate_of_id IS NULL LIMIT 1;
    RETURN primary_id;
END
$$
"""


def _columns(model) -> str:
    return ", ".join(f'"{field.column}"' for field in model._meta.concrete_fields)


def _fetch(cursor, sql, params=()):
    cursor.execute(sql, params)
    return cursor.fetchall()


def _drop_indexes(cursor, table: str) -> None:
    """Every index and key of `table` (their names are about to be reused)."""
    for (constraint,) in _fetch(
        cursor,
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u')",
        [table],
    ):
        cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{constraint}"')
    for (index,) in _fetch(
        cursor,
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s)",
        [table],
    ):
        cursor.execute(f'DROP INDEX "{index}"')


def _move_sequence(cursor, table: str, new_name: str) -> tuple[int, bool]:
    ((sequence,),) = _fetch(cursor, "SELECT pg_get_serial_sequence(%s, 'id')", [table])
    ((last_value, is_called),) = _fetch(cursor, f"SELECT last_value, is_called FROM {sequence}")
    cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO \"{new_name}\"")
    return last_value, is_called


def _carry_on_sequence(cursor, table: str, last_value: int, is_called: bool) -> None:
    cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, %s)", [table, last_value, is_called])


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from api.stations.ingest import event_partitions

    model = apps.get_model("stations", "IoTEvent")
    compression = " INCLUDING COMPRESSION" if schema_editor.connection.pg_version >= 140000 else ""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{ASIDE}"')
        last_value, is_called = _move_sequence(cursor, ASIDE, f"{ASIDE}_id_seq")
        _drop_indexes(cursor, ASIDE)
        cursor.execute(
            f'CREATE TABLE "{TABLE}" (LIKE "{ASIDE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
            f"INCLUDING IDENTITY INCLUDING STORAGE{compression}) PARTITION BY RANGE (received_at)"
        )
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, received_at)')
        # The model's indexes, as Django names them, as partitioned indexes; not its unique
        # digest constraint (each day has its own, see event_partitions).
        for statement in schema_editor._model_indexes_sql(model):
            cursor.execute(str(statement))
        event_partitions.set_compression(cursor, TABLE)
        event_partitions.create_default_partition(cursor)
        today = timezone.now().date()
        days = {row[0] for row in _fetch(cursor, f"SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM \"{ASIDE}\"")}
        for day in sorted(days | {today + timedelta(days=n) for n in range(8)}):
            event_partitions.create_partition(cursor, day)
        columns = _columns(model)
        cursor.execute(f'INSERT INTO "{TABLE}" ({columns}) SELECT {columns} FROM "{ASIDE}"')
        _carry_on_sequence(cursor, TABLE, last_value, is_called)
        cursor.execute(f'DROP TABLE "{ASIDE}"')
        cursor.execute(CREATE_FUNCTION)


def drop_orphan_repeats(cursor, table: str) -> None:
    # A repeat whose first delivery's day was dropped: the foreign key about to come back
    # would refuse it, and its body is gone anyway.
    cursor.execute(
        f'DELETE FROM "{table}" WHERE duplicate_of_id IS NOT NULL AND NOT EXISTS '
        f'(SELECT 1 FROM "{table}" p WHERE p.id = "{table}".duplicate_of_id)'
    )


def unpartition(apps, schema_editor):
    model = apps.get_model("stations", "IoTEvent")
    with schema_editor.connection.cursor() as cursor:
        if schema_editor.connection.vendor != "postgresql":
            drop_orphan_repeats(cursor, TABLE)
            return
        cursor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(text)")
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{PARTITIONED_ASIDE}"')
        last_value, is_called = _move_sequence(cursor, PARTITIONED_ASIDE, f"{PARTITIONED_ASIDE}_id_seq")
        _drop_indexes(cursor, PARTITIONED_ASIDE)
        schema_editor.create_model(model)
        columns = _columns(model)
        cursor.execute(f'INSERT INTO "{TABLE}" ({columns}) SELECT {columns} FROM "{PARTITIONED_ASIDE}"')
        _carry_on_sequence(cursor, TABLE, last_value, is_called)
        cursor.execute(f'DROP TABLE "{PARTITIONED_ASIDE}" CASCADE')
        drop_orphan_repeats(cursor, TABLE)


class Migration(migrations.Migration):
    dependencies = [
        ("stations", "0006_repair_future_device_times"),
    ]

    operations = [
        migrations.AlterField(
            model_name="iotevent",
            name="duplicate_of",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="duplicates",
                to="stations.iotevent",
            ),
        ),
        migrations.RunPython(partition, unpartition),
    ]
