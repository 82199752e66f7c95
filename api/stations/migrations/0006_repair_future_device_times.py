"""
Stations whose newest device state is dated in the future get it set to now.

Before the body timestamp of `full` and `status` messages was checked against our clock, a
cabinet whose clock ran ahead could set `device_state_at` days ahead, and every genuine
message after it was stale until that day. `last_heartbeat` and `status_changed_at` were
always capped at the server's clock, so only a server clock that was itself ahead could
have left them in the future; they would freeze the same way ("never backwards"), so they
are repaired too. Status history rows are a record and are left as they are.
"""

from django.db import migrations
from django.utils import timezone

FIELDS = ("device_state_at", "last_heartbeat", "status_changed_at")


def repair_future_times(apps, schema_editor):
    Station = apps.get_model("stations", "Station")
    now = timezone.now()
    for field in FIELDS:
        Station.objects.filter(**{f"{field}__gt": now}).update(**{field: now, "updated_at": now})


class Migration(migrations.Migration):

    dependencies = [
        ("stations", "0005_iot_event_body_once"),
    ]

    operations = [
        # Nothing to put back: the future times were wrong.
        migrations.RunPython(repair_future_times, migrations.RunPython.noop, elidable=True),
    ]
