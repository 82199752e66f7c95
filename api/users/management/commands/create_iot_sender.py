"""
The IoT system's account: staff, in the "IoT system" group (may push station data), and
nothing else. Creates it or brings an existing one to that state.

    manage.py create_iot_sender --email iot@chargeghar.example            # asks for the password
    IOT_SENDER_PASSWORD=... manage.py create_iot_sender --email iot@...   # non-interactive
"""

import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from api.stations.views.internal_views import IOT_SYSTEM_GROUP

PASSWORD_VARIABLE = "IOT_SENDER_PASSWORD"


class Command(BaseCommand):
    help = 'Create or update the IoT system\'s account (staff, in the "IoT system" group).'

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--username", help="default: the part of the email before @")
        parser.add_argument(
            "--keep-password",
            action="store_true",
            help="an existing account keeps its password (nothing is asked)",
        )

    def handle(self, *args, email, username=None, keep_password=False, **options):
        User = get_user_model()
        user = User.objects.filter(email__iexact=email).first()
        created = user is None
        if created:
            user = User(email=email, username=username or email.split("@")[0])
        elif username:
            user.username = username
        if created or not keep_password:
            user.set_password(self._password(user))
        try:
            group = Group.objects.get(name=IOT_SYSTEM_GROUP)
        except Group.DoesNotExist:
            raise CommandError(f'No "{IOT_SYSTEM_GROUP}" group: run manage.py migrate first.') from None
        with transaction.atomic():
            user.is_staff = True
            user.is_active = True
            user.save()
            user.groups.add(group)
        self.stdout.write(
            f"{'Created' if created else 'Updated'} {user.email} (username {user.get_username()}): "
            f'staff, in the "{IOT_SYSTEM_GROUP}" group.'
        )

    def _password(self, user) -> str:
        password = os.environ.get(PASSWORD_VARIABLE)
        if password is None:
            if not sys.stdin.isatty():
                raise CommandError(f"Set {PASSWORD_VARIABLE}, or run this in a terminal to be asked.")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords differ.")
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        return password
