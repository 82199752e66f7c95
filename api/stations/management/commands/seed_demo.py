import os
import secrets
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from api.rentals.models import PaymentModel, RentalPackage

DEMO_PACKAGES = [
    # name, minutes, price, payment model, grace minutes
    ("1 hour", 60, Decimal("100.00"), PaymentModel.PREPAID, 5),
    ("3 hours", 180, Decimal("250.00"), PaymentModel.PREPAID, 10),
    ("Pay as you go (day)", 1440, Decimal("600.00"), PaymentModel.POSTPAID, 15),
]
DEMO_CUSTOMERS = ["sita@example.com", "ram@example.com", "maya@example.com"]


class Command(BaseCommand):
    help = (
        "Create what a fresh installation needs to be tried out: a staff login (printed), "
        "rental packages and a few customers. Safe to run again; the password is reset "
        "and printed each time unless --password is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--email", default="admin@chargeghar.local")
        parser.add_argument(
            "--password",
            default=os.environ.get("SEED_DEMO_PASSWORD") or None,
            help="default: $SEED_DEMO_PASSWORD, else a new random one",
        )
        parser.add_argument("--no-demo-data", action="store_true", help="only the staff login")

    @transaction.atomic
    def handle(self, *args, email, password=None, no_demo_data=False, **options):
        User = get_user_model()
        password = password or secrets.token_urlsafe(12)
        admin = User.objects.filter(email__iexact=email).first()
        if admin is None:
            admin = User(username=email.split("@")[0], email=email)
        admin.is_staff = True
        admin.is_superuser = True
        admin.is_active = True
        admin.set_password(password)
        admin.save()

        if not no_demo_data:
            for name, minutes, price, model, grace in DEMO_PACKAGES:
                RentalPackage.objects.update_or_create(
                    name=name,
                    defaults={
                        "duration_minutes": minutes,
                        "price": price,
                        "payment_model": model,
                        "grace_minutes": grace,
                    },
                )
            for customer in DEMO_CUSTOMERS:
                if not User.objects.filter(email__iexact=customer).exists():
                    User.objects.create_user(
                        username=customer.split("@")[0], email=customer, password=None
                    )

        self.stdout.write(self.style.SUCCESS("Staff login (admin and the IoT sender's login API):"))
        self.stdout.write(f"  email:    {admin.email}   (the login API)")
        self.stdout.write(f"  username: {admin.get_username()}   (the /admin/ form)")
        self.stdout.write(f"  password: {password}")
