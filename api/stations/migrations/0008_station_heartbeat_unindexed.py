from django.db import migrations, models


class Migration(migrations.Migration):
    """
    A full sync rewrites its station's row, and `last_heartbeat` changes every time: with an
    index on it, PostgreSQL can never update the row in place (a HOT update) and writes a new
    entry into each of the table's seven indexes instead, on every message. The only reads by
    `last_heartbeat` are the silent-station checks, which filter by status as well and run
    once a minute, not per message.
    """

    dependencies = [("stations", "0007_partition_iot_events")]

    operations = [
        migrations.AlterField(
            model_name="station",
            name="last_heartbeat",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
