"""
The permission to push station data and the "IoT system" group that holds it.

The sender's account is a staff user in that group (docs/deploy.md); superusers have every
permission. Permissions are otherwise created after migrations run, so this one is created
here, for the group to hold it from the start.
"""

from django.db import migrations

GROUP = "IoT system"
CODENAME = "push_station_data"
NAME = "Can push station data (the IoT system's account)"


def create_group(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.get_or_create(app_label="stations", model="station")
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type, codename=CODENAME, defaults={"name": NAME}
    )
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(permission)


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()
    apps.get_model("auth", "Permission").objects.filter(
        content_type__app_label="stations", codename=CODENAME
    ).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("stations", "0003_event_log_indexes"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="station",
            options={
                "ordering": ["serial_number"],
                "permissions": [("push_station_data", "Can push station data (the IoT system's account)")],
            },
        ),
        migrations.RunPython(create_group, remove_group),
    ]
