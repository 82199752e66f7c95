from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import RequestFactory, TestCase

from api.rentals.models import RentalPackage
from api.users.services import authenticate_admin


class SeedDemoTests(TestCase):
    def test_seed_demo_prints_a_staff_login_that_works_and_is_safe_to_run_again(self):
        out = StringIO()
        call_command("seed_demo", stdout=out)
        password = next(
            line.split(":", 1)[1].strip() for line in out.getvalue().splitlines() if "password:" in line
        )
        request = RequestFactory().post("/api/admin/login")
        user = authenticate_admin(request, email="admin@chargeghar.local", password=password)
        self.assertEqual(user.is_staff, True)

        again = StringIO()
        call_command("seed_demo", stdout=again)
        new_password = next(
            line.split(":", 1)[1].strip() for line in again.getvalue().splitlines() if "password:" in line
        )
        self.assertNotEqual(new_password, password)
        self.assertEqual(get_user_model().objects.filter(email="admin@chargeghar.local").count(), 1)
        self.assertEqual(RentalPackage.objects.count(), 3)
        authenticate_admin(request, email="admin@chargeghar.local", password=new_password)
