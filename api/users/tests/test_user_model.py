"""The custom user model: superusers for operators, one account per email address."""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.test import TestCase

User = get_user_model()


class CreateSuperuserTests(TestCase):
    def test_create_superuser_makes_an_active_staff_superuser_who_can_log_in(self):
        user = User.objects.create_superuser(
            username="root", email="root@chargeghar.test", password="operator-pass-123"
        )

        user.refresh_from_db()
        self.assertEqual(user.username, "root")
        self.assertEqual(user.email, "root@chargeghar.test")
        self.assertTrue(user.is_staff)
        self.assertTrue(user.is_superuser)
        self.assertTrue(user.is_active)
        self.assertTrue(user.check_password("operator-pass-123"))
        self.assertEqual(User.objects.count(), 1)

    def test_str_is_the_email(self):
        user = User.objects.create_user(username="op", email="op@chargeghar.test", password="x")

        self.assertEqual(str(user), "op@chargeghar.test")


class EmailUniquenessTests(TestCase):
    """Login is by email, so the database must refuse a second account for one address."""

    def setUp(self):
        self.user = User.objects.create_user(
            username="first", email="operator@chargeghar.test", password="pass-123-first"
        )

    def assertRefused(self, action):
        count = User.objects.count()
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                action()
        self.assertEqual(User.objects.count(), count)

    def test_the_same_email_twice_is_refused(self):
        self.assertRefused(
            lambda: User.objects.create_user(
                username="second", email="operator@chargeghar.test", password="pass-123-second"
            )
        )

    def test_an_email_differing_only_in_case_is_refused(self):
        self.assertRefused(
            lambda: User.objects.create_user(
                username="second", email="Operator@ChargeGhar.TEST", password="pass-123-second"
            )
        )

    def test_changing_an_email_to_a_case_variant_of_another_is_refused(self):
        other = User.objects.create_user(
            username="second", email="other@chargeghar.test", password="pass-123-second"
        )

        self.assertRefused(lambda: User.objects.filter(pk=other.pk).update(email="OPERATOR@chargeghar.test"))
        other.refresh_from_db()
        self.assertEqual(other.email, "other@chargeghar.test")

    def test_different_emails_are_fine(self):
        User.objects.create_user(username="second", email="other@chargeghar.test", password="x")

        self.assertEqual(User.objects.count(), 2)
