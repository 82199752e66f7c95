"""
The event log keeps a body once: on its first delivery's row. Later deliveries of the same
bytes (same digest) keep their size, source and answer, but not another copy.

Repeats logged before this kept a full copy each; those copies are identical to their
first delivery's (the digest is over the very bytes), so dropping them loses nothing.
"""

from django.db import migrations, models
from django.db.models import Q


def drop_repeated_bodies(apps, schema_editor):
    IoTEvent = apps.get_model("stations", "IoTEvent")
    IoTEvent.objects.filter(duplicate_of__isnull=False).filter(
        Q(payload__isnull=False) | ~Q(raw_body="")
    ).update(payload=None, raw_body="")


class Migration(migrations.Migration):

    dependencies = [
        ("stations", "0004_push_station_data_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="iotevent",
            name="body_bytes",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Size of the body as received, in bytes (empty on rows logged before it was kept).",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="iotevent",
            name="raw_body",
            field=models.TextField(
                blank=True, help_text="Kept only when the body is not JSON, on its first delivery."
            ),
        ),
        # Nothing to put back: the first delivery's row has the body.
        migrations.RunPython(drop_repeated_bodies, migrations.RunPython.noop, elidable=True),
    ]
