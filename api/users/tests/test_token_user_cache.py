"""
The bearer token's user is reused for `AUTH_USER_CACHE_SECONDS` (api/users/authentication.py):
one database read per user per period instead of one per request, without letting a
deactivated or demoted account keep access for longer than that.
"""

import time
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from api.stations.tests.factories import bearer_for, make_staff

ME = "/api/admin/me"
User = get_user_model()


@override_settings(AUTH_USER_CACHE_SECONDS=10)
class TokenUserCacheTests(TestCase):
    def setUp(self):
        cache.clear()
        self.addCleanup(cache.clear)
        self.user = make_staff()
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=bearer_for(self.user))

    def user_reads(self) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = self.client.get(ME)
        self.last_status = response.status_code
        return sum('FROM "users_user"' in query["sql"] for query in queries.captured_queries)

    def test_the_user_is_read_once_then_reused(self):
        self.assertEqual(self.user_reads(), 1)
        self.assertEqual(self.user_reads(), 0)
        self.assertEqual(self.last_status, 200)

    def test_deactivating_an_account_through_the_model_takes_effect_at_once(self):
        self.user_reads()
        self.user.is_active = False
        self.user.save()

        self.assertEqual(self.client.get(ME).status_code, 401)

    def test_demoting_an_account_through_the_model_takes_effect_at_once(self):
        self.user_reads()
        self.user.is_staff = False
        self.user.save()

        self.assertEqual(self.client.get(ME).status_code, 403)

    def test_a_change_made_elsewhere_takes_effect_when_the_entry_expires(self):
        # Another process (or a bulk update) changes the row without this process's signal.
        self.user_reads()
        User.objects.filter(pk=self.user.pk).update(is_active=False)
        self.assertEqual(self.client.get(ME).status_code, 200)  # still within the period

        later = time.time() + 11
        with mock.patch("django.core.cache.backends.locmem.time.time", return_value=later):
            self.assertEqual(self.client.get(ME).status_code, 401)

    def test_inactive_users_are_never_cached(self):
        User.objects.filter(pk=self.user.pk).update(is_active=False)
        self.assertEqual(self.client.get(ME).status_code, 401)
        User.objects.filter(pk=self.user.pk).update(is_active=True)
        self.assertEqual(self.client.get(ME).status_code, 200)

    @override_settings(AUTH_USER_CACHE_SECONDS=0)
    def test_zero_reads_the_user_on_every_request(self):
        self.assertEqual(self.user_reads(), 1)
        self.assertEqual(self.user_reads(), 1)


class VerifiedTokenMemoTests(TestCase):
    """A token's bytes are verified once per process; its expiry is checked on every request."""

    def setUp(self):
        from api.users import authentication

        cache.clear()
        self.addCleanup(cache.clear)
        authentication._VERIFIED.clear()
        self.addCleanup(authentication._VERIFIED.clear)
        self.user = make_staff()
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=bearer_for(self.user))

    def test_the_same_token_is_decoded_once(self):
        from rest_framework_simplejwt.backends import TokenBackend

        with mock.patch.object(TokenBackend, "decode", autospec=True, side_effect=TokenBackend.decode) as decode:
            self.assertEqual(self.client.get(ME).status_code, 200)
            self.assertEqual(self.client.get(ME).status_code, 200)
        self.assertEqual(decode.call_count, 1)

    def test_a_verified_token_is_refused_once_it_expires(self):
        from datetime import timedelta

        from rest_framework_simplejwt.tokens import AccessToken

        token = AccessToken.for_user(self.user)
        token.set_exp(lifetime=timedelta(seconds=1))
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        self.assertEqual(self.client.get(ME).status_code, 200)
        time.sleep(1.2)  # the clock, not a mock: the expiry is read on each request
        self.assertEqual(self.client.get(ME).status_code, 401)

    def test_a_forged_token_is_refused_although_a_valid_one_is_remembered(self):
        self.assertEqual(self.client.get(ME).status_code, 200)
        header, payload, signature = bearer_for(self.user).removeprefix("Bearer ").split(".")
        forged = f"Bearer {header}.{payload}.{signature[:-2]}AA"
        self.client.credentials(HTTP_AUTHORIZATION=forged)
        self.assertEqual(self.client.get(ME).status_code, 401)
