"""
Room on every page of the station, slot and power-bank tables for the next version of its
rows. A full sync rewrites its station's row, all its slots and all its banks, changing no
indexed column, so PostgreSQL can update each row in place (a HOT update: no new index
entries, the old version pruned from the page without VACUUM), but only when the row's page
has room for the new version. Packed full (the default fill factor, 100), about one update
in seven of slots and banks, and one in ten of stations, found no room and wrote a new
entry into each of the table's indexes instead (docs/performance.md, "Eighth pass").

Half of each page is left free because one statement rewrites all of a station's slots (or
banks), which lie together on their pages: their old versions are still live until it
commits, so the page needs room for a second copy of them. The next sync finds the old
versions dead and prunes them. `test_hot_updates.py` fails at 60. The cost is space: these
tables take twice the pages (a few hundred bytes a row). PostgreSQL only: SQLite has no
fill factor. Rows already stored move as they are updated.
"""

from django.db import migrations

TABLES = ("stations_station", "stations_stationslot", "stations_powerbank")
FILLFACTOR = 50


def _set(schema_editor, value: int | None) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        for table in TABLES:
            if value is None:
                cursor.execute(f"ALTER TABLE {quote(table)} RESET (fillfactor)")
            else:
                cursor.execute(f"ALTER TABLE {quote(table)} SET (fillfactor = {int(value)})")


def leave_room(apps, schema_editor):
    _set(schema_editor, FILLFACTOR)


def pack_full(apps, schema_editor):
    _set(schema_editor, None)


class Migration(migrations.Migration):
    dependencies = [("stations", "0009_event_repeat_window")]

    operations = [migrations.RunPython(leave_room, pack_full)]
