"""
The first delivery of a body is looked up only among the days a repeat is recognised in
(`IOT_EVENT_REPEAT_DAYS`, docs/decisions.md, "A repeat is recognised for a week"), not in
every day the log keeps: the lookup probes one index per day, so over 90 days it cost
about ten times what it costs over a week, on every message. PostgreSQL only; SQLite's
plain table has one unique index over every first delivery and needs no function.
"""

from django.db import migrations

FUNCTION = "stations_iotevent_primary"

# As migration 0007's, with the days bounded: `since` lets PostgreSQL skip the partitions
# of older days before it probes any index (run-time partition pruning).
BOUNDED = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(digest text, since timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    primary_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(digest, 16));
    SELECT id INTO primary_id FROM stations_iotevent
     WHERE body_sha256 = digest AND duplicate_of_id IS NULL AND received_at >= since LIMIT 1;
    RETURN primary_id;
END
$$
"""

UNBOUNDED = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(digest text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    primary_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(digest, 16));
    SELECT id INTO primary_id FROM stations_iotevent
     WHERE body_sha256 = digest AND duplicate_of_id IS NULL LIMIT 1;
    RETURN primary_id;
END
$$
"""


def bound(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(BOUNDED)
        cursor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(text)")


def unbound(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(UNBOUNDED)
        cursor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(text, timestamptz)")


class Migration(migrations.Migration):
    dependencies = [("stations", "0008_station_heartbeat_unindexed")]

    operations = [migrations.RunPython(bound, unbound)]
