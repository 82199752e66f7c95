"""
Login throttling (django-axes, api/users/lockout.py): ten failures for one account from one
address refuse that address for that account, the right password included, for the
cool-off; other addresses and other accounts are not affected. Counted in the database.
"""

import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from unittest import mock

from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.management import call_command
from django.test import TestCase, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from api.stations.tests.factories import make_staff
from main_app.exceptions import InvalidCredentials, TooManyAttempts

LOGIN = "/api/admin/login"
EMAIL = "iot@chargeghar.test"
PASSWORD = "s3cret-pass-123"
ATTACKER = "198.51.100.7"
SENDER = "203.0.113.10"


class ThrottlingTestCase(TestCase):
    def setUp(self):
        self.staff = make_staff(EMAIL, PASSWORD)
        self.client = APIClient()

    def login(self, password=PASSWORD, email=EMAIL, ip=ATTACKER, **extra):
        return self.client.generic(
            "POST",
            LOGIN,
            json.dumps({"email": email, "password": password}),
            content_type="application/json",
            REMOTE_ADDR=ip,
            **extra,
        )

    def fail(self, times, **kwargs):
        return [self.login(password="wrong-password", **kwargs) for _ in range(times)]

    def assertLockedOut(self, response):
        self.assertEqual(response.status_code, 429, response.content)
        body = response.json()
        self.assertEqual(body["error"], TooManyAttempts.code)
        self.assertIs(body["success"], False)
        self.assertEqual(set(body), {"success", "message", "error"})
        retry_after = int(response["Retry-After"])
        self.assertTrue(0 < retry_after <= settings.AXES_COOLOFF_TIME.total_seconds(), retry_after)
        return retry_after


class ApiLockoutTests(ThrottlingTestCase):
    def test_the_settings_are_ten_failures_and_fifteen_minutes(self):
        self.assertEqual(settings.AXES_FAILURE_LIMIT, 10)
        self.assertEqual(settings.AXES_COOLOFF_TIME, timedelta(minutes=15))
        self.assertEqual(settings.AXES_LOCKOUT_PARAMETERS, [["username", "ip_address"]])
        self.assertEqual(settings.AXES_HANDLER, "axes.handlers.database.AxesDatabaseHandler")
        self.assertEqual(settings.AUTHENTICATION_BACKENDS[0], "axes.backends.AxesStandaloneBackend")

    def test_after_ten_failures_even_the_right_password_is_refused(self):
        answers = self.fail(10)

        self.assertEqual([a.status_code for a in answers[:9]], [401] * 9)
        self.assertEqual(answers[9].status_code, 429)  # the tenth failure locks
        retry_after = self.assertLockedOut(self.login())
        self.assertGreater(retry_after, 14 * 60)

    def test_nine_failures_do_not_lock(self):
        self.fail(9)

        self.assertEqual(self.login().status_code, 200)

    def test_a_success_clears_the_count(self):
        self.fail(9)
        self.assertEqual(self.login().status_code, 200)
        answers = self.fail(9)

        self.assertEqual({a.status_code for a in answers}, {401})
        self.assertEqual(self.login().status_code, 200)

    def test_another_address_is_not_affected(self):
        self.fail(10, ip=ATTACKER)

        self.assertEqual(self.login(ip=SENDER).status_code, 200)
        self.assertLockedOut(self.login(ip=ATTACKER))

    def test_another_account_from_the_locked_address_is_not_affected(self):
        make_staff("ops@chargeghar.test", "ops-pass-12345")
        self.fail(10)

        self.assertEqual(self.login("ops-pass-12345", email="ops@chargeghar.test").status_code, 200)

    def test_the_email_is_one_account_whatever_its_case(self):
        for index in range(10):
            self.login(password="wrong", email=EMAIL.upper() if index % 2 else EMAIL)

        self.assertLockedOut(self.login(email="IoT@ChargeGhar.test"))

    def test_unknown_accounts_are_counted_too(self):
        answers = self.fail(11, email="nobody@chargeghar.test")

        self.assertEqual(answers[8].status_code, 401)
        self.assertLockedOut(answers[10])

    def test_the_lock_ends_after_the_cool_off(self):
        self.fail(10)
        self.assertLockedOut(self.login())

        later = timezone.now() + settings.AXES_COOLOFF_TIME + timedelta(seconds=1)
        with mock.patch("axes.handlers.proxy.now", return_value=later):
            self.assertEqual(self.login().status_code, 200)

    def test_retry_after_counts_down_to_the_end_of_the_cool_off(self):
        self.fail(10)

        later = timezone.now() + timedelta(minutes=10)
        with mock.patch("axes.handlers.proxy.now", return_value=later):
            retry_after = self.assertLockedOut(self.login())
        self.assertTrue(4 * 60 <= retry_after <= 5 * 60 + 1, retry_after)

    def test_attempts_during_the_lockout_do_not_extend_it(self):
        # The sender retrying with its right password must not keep itself locked out.
        self.fail(10)
        for minutes in (5, 10, 14):
            at = timezone.now() + timedelta(minutes=minutes)
            with mock.patch("axes.handlers.proxy.now", return_value=at):
                self.assertLockedOut(self.login())

        later = timezone.now() + settings.AXES_COOLOFF_TIME + timedelta(seconds=1)
        with mock.patch("axes.handlers.proxy.now", return_value=later):
            self.assertEqual(self.login().status_code, 200)

    @override_settings(AXES_COOLOFF_TIME=timedelta(minutes=2))
    def test_the_cool_off_follows_the_setting(self):
        self.fail(10)

        retry_after = self.assertLockedOut(self.login())
        self.assertLessEqual(retry_after, 120)

    def test_no_password_is_hashed_once_locked_out(self):
        self.fail(10)

        with (
            mock.patch.object(AbstractBaseUser, "check_password") as check,
            mock.patch.object(AbstractBaseUser, "set_password") as hash_dummy,
        ):
            self.assertLockedOut(self.login())
            self.assertLockedOut(self.login(password="wrong-again"))
        check.assert_not_called()
        hash_dummy.assert_not_called()

    def test_the_counters_are_in_the_database(self):
        self.fail(3)

        attempt = AccessAttempt.objects.get()
        self.assertEqual((attempt.username, attempt.ip_address, attempt.failures_since_start), (EMAIL, ATTACKER, 3))
        self.assertEqual(AccessFailureLog.objects.filter(username=EMAIL, ip_address=ATTACKER).count(), 3)


class ClientAddressTests(ThrottlingTestCase):
    """The address axes counts is the one the IoT allowlist uses (main_app.middleware.client_ip)."""

    def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(self):
        for index in range(10):
            self.login(password="wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{index}")

        self.assertLockedOut(self.login(HTTP_X_FORWARDED_FOR=SENDER))
        self.assertEqual(set(AccessAttempt.objects.values_list("ip_address", flat=True)), {ATTACKER})

    @override_settings(IOT_TRUSTED_PROXIES=["10.0.0.0/8"])
    def test_behind_a_trusted_proxy_each_client_is_counted_apart(self):
        for _ in range(10):
            self.login(password="wrong", ip="10.0.0.2", HTTP_X_FORWARDED_FOR=ATTACKER)

        self.assertLockedOut(self.login(ip="10.0.0.2", HTTP_X_FORWARDED_FOR=ATTACKER))
        self.assertEqual(self.login(ip="10.0.0.2", HTTP_X_FORWARDED_FOR=SENDER).status_code, 200)
        # A hop the attacker wrote further left changes nothing.
        self.assertLockedOut(self.login(ip="10.0.0.2", HTTP_X_FORWARDED_FOR=f"{SENDER}, {ATTACKER}"))


class OperatorTests(ThrottlingTestCase):
    def test_failures_are_logged_without_the_password(self):
        with self.assertLogs("axes", logging.WARNING) as logs:
            self.fail(10)

        text = "\n".join(logs.output)
        self.assertIn(EMAIL, text)
        self.assertIn("Locking out", text)
        self.assertNotIn("wrong-password", text)
        stored = AccessAttempt.objects.values_list("get_data", "post_data")
        self.assertNotIn("wrong-password", repr(list(stored)))

    def test_lockouts_are_listed_in_the_admin_and_deleting_one_unlocks(self):
        self.fail(10)
        root = make_staff("root@chargeghar.test", is_superuser=True)
        admin = APIClient()
        admin.force_login(root)

        listing = admin.get("/admin/axes/accessattempt/")
        self.assertEqual(listing.status_code, 200)
        self.assertContains(listing, EMAIL)
        self.assertContains(listing, ATTACKER)
        self.assertEqual(admin.get("/admin/axes/accessfailurelog/").status_code, 200)

        attempt = AccessAttempt.objects.get()
        deleted = admin.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
        self.assertEqual(deleted.status_code, 302)
        self.assertEqual(self.login().status_code, 200)

    def test_axes_reset_username_unlocks(self):
        self.fail(10)
        self.assertLockedOut(self.login())

        call_command("axes_reset_username", EMAIL, stdout=open(os.devnull, "w"))

        self.assertEqual(self.login().status_code, 200)


class AdminFormLockoutTests(TestCase):
    def setUp(self):
        self.operator = make_staff("ops@chargeghar.test", "ops-pass-12345")

    def form_login(self, password, username="ops"):
        return self.client.post(
            "/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=ATTACKER
        )

    def test_ten_failures_lock_the_form_with_a_clear_message(self):
        for _ in range(9):
            self.assertEqual(self.form_login("wrong").status_code, 200)  # the form again

        locked = self.form_login("wrong")
        self.assertEqual(locked.status_code, 429)
        self.assertContains(locked, "Too many failed login attempts", status_code=429)
        self.assertTrue(locked.has_header("Retry-After"))
        right = self.form_login("ops-pass-12345")
        self.assertEqual(right.status_code, 429)
        self.assertNotIn("_auth_user_id", self.client.session)

    def test_the_form_and_the_api_count_against_one_account(self):
        for _ in range(5):
            self.form_login("wrong")
        api = APIClient()
        for _ in range(5):
            api.generic("POST", LOGIN, json.dumps({"email": "OPS@chargeghar.test", "password": "wrong"}),
                        content_type="application/json", REMOTE_ADDR=ATTACKER)

        self.assertEqual(self.form_login("ops-pass-12345").status_code, 429)
        self.assertEqual(AccessAttempt.objects.get().username, "ops@chargeghar.test")

    def test_a_successful_form_login_still_works_and_clears_the_count(self):
        for _ in range(9):
            self.form_login("wrong")

        response = self.form_login("ops-pass-12345")

        self.assertEqual(response.status_code, 302)
        self.assertFalse(AccessAttempt.objects.exists())


class AnswersTests(ThrottlingTestCase):
    def test_a_locked_out_answer_says_nothing_about_the_password(self):
        self.fail(10)

        right, wrong = self.login(), self.login(password="wrong")

        self.assertEqual(right.content, wrong.content)
        self.assertNotEqual(right.json()["error"], InvalidCredentials.code)


class LockoutSettingsFromTheEnvironmentTests(TestCase):
    def test_cool_off_and_limit_are_read_from_the_environment(self):
        script = (
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.AXES_COOLOFF_TIME.total_seconds(), settings.AXES_FAILURE_LIMIT)"
        )
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "main_app.settings",
            "DJANGO_ENV_FILE": "",
            "DJANGO_DEBUG": "true",
            "DATABASE_URL": "sqlite://:memory:",
            "LOG_TO_FILE": "false",
            "AUTH_LOCKOUT_MINUTES": "30",
            "AUTH_LOCKOUT_FAILURES": "5",
        }
        result = subprocess.run([sys.executable, "-c", script], cwd=settings.BASE_DIR, env=environment,
                                capture_output=True, text=True, timeout=120)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["1800.0", "5"])
