"""
Tokens end when they should: a refresh rotates (the used refresh token is revoked), logout
revokes, and a password change or a deactivation ends every token of the account, refresh
tokens at once and access tokens within AUTH_USER_CACHE_SECONDS on every host.
"""

import json
import time
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import TestCase, override_settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from api.stations.tests.factories import make_staff

LOGIN = "/api/admin/login"
REFRESH = "/api/admin/refresh"
LOGOUT = "/api/admin/logout"
ME = "/api/admin/me"
EMAIL = "iot@chargeghar.test"
PASSWORD = "s3cret-pass-123"
User = get_user_model()


class TokenTestCase(TestCase):
    def setUp(self):
        cache.clear()
        self.addCleanup(cache.clear)
        self.staff = make_staff(EMAIL, PASSWORD)
        self.client = APIClient()

    def post(self, path, body):
        return self.client.generic("POST", path, json.dumps(body), content_type="application/json")

    def login(self, password=PASSWORD):
        response = self.post(LOGIN, {"email": EMAIL, "password": password})
        self.assertEqual(response.status_code, 200, response.content)
        return response.json()["data"]

    def refresh(self, token):
        return self.post(REFRESH, {"refresh_token": token})

    def me(self, access):
        return self.client.get(ME, HTTP_AUTHORIZATION=f"Bearer {access}")

    def assertNotAuthenticated(self, response):
        self.assertEqual(response.status_code, 401, response.content)
        self.assertEqual(response.json()["error"], "NOT_AUTHENTICATED")


class RotationTests(TokenTestCase):
    def test_refresh_answers_a_new_refresh_token_and_revokes_the_old_one(self):
        tokens = self.login()

        response = self.refresh(tokens["refresh_token"])

        self.assertEqual(response.status_code, 200, response.content)
        body = response.json()
        self.assertEqual(set(body["data"]), {"access_token", "refresh_token"})
        self.assertNotEqual(body["data"]["refresh_token"], tokens["refresh_token"])
        self.assertEqual(self.me(body["data"]["access_token"]).status_code, 200)
        self.assertNotAuthenticated(self.refresh(tokens["refresh_token"]))
        self.assertEqual(self.refresh(body["data"]["refresh_token"]).status_code, 200)

    def test_the_revoked_token_is_in_the_blacklist(self):
        tokens = self.login()
        jti = RefreshToken(tokens["refresh_token"])["jti"]

        self.refresh(tokens["refresh_token"])

        self.assertTrue(BlacklistedToken.objects.filter(token__jti=jti).exists())

    def test_a_token_blacklisted_while_in_use_gets_no_new_tokens(self):
        # Two refreshes with one token racing: whichever writes the blacklist row second loses.
        tokens = self.login()
        RefreshToken(tokens["refresh_token"]).blacklist()

        with mock.patch("rest_framework_simplejwt.tokens.RefreshToken.check_blacklist"):
            self.assertNotAuthenticated(self.refresh(tokens["refresh_token"]))


class LogoutTests(TokenTestCase):
    def test_logout_revokes_the_refresh_token(self):
        tokens = self.login()

        response = self.post(LOGOUT, {"refresh_token": tokens["refresh_token"]})

        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(response.json(), {"success": True, "message": "Logged out", "data": {}})
        self.assertNotAuthenticated(self.refresh(tokens["refresh_token"]))

    def test_logout_needs_a_valid_refresh_token(self):
        tokens = self.login()
        cases = {
            "garbage": "not-a-jwt",
            "an access token": tokens["access_token"],
        }
        for name, token in cases.items():
            with self.subTest(name):
                self.assertNotAuthenticated(self.post(LOGOUT, {"refresh_token": token}))
        self.post(LOGOUT, {"refresh_token": tokens["refresh_token"]})
        self.assertNotAuthenticated(self.post(LOGOUT, {"refresh_token": tokens["refresh_token"]}))

    def test_logout_validates_its_body(self):
        response = self.post(LOGOUT, {})

        self.assertEqual(response.status_code, 400)
        self.assertEqual(response.json()["error"], "VALIDATION_ERROR")


class CredentialChangeTests(TokenTestCase):
    def test_a_password_change_revokes_every_refresh_token_at_once(self):
        first, second = self.login(), self.login()

        self.staff.set_password("a-new-pass-456")
        self.staff.save()

        self.assertNotAuthenticated(self.refresh(first["refresh_token"]))
        self.assertNotAuthenticated(self.refresh(second["refresh_token"]))
        self.assertFalse(OutstandingToken.objects.filter(user=self.staff, blacklistedtoken__isnull=True).exists())
        self.assertEqual(self.post(LOGIN, {"email": EMAIL, "password": "a-new-pass-456"}).status_code, 200)

    def test_a_password_change_by_update_refuses_refresh_tokens_too(self):
        # No signal: the token's password claim no longer matches the row.
        tokens = self.login()
        new = User(password="")
        new.set_password("a-new-pass-456")
        User.objects.filter(pk=self.staff.pk).update(password=new.password)

        self.assertNotAuthenticated(self.refresh(tokens["refresh_token"]))

    def test_deactivation_revokes_every_refresh_token(self):
        tokens = self.login()

        self.staff.is_active = False
        self.staff.save()

        self.assertFalse(OutstandingToken.objects.filter(user=self.staff, blacklistedtoken__isnull=True).exists())
        self.assertNotAuthenticated(self.refresh(tokens["refresh_token"]))

    def test_other_changes_revoke_nothing(self):
        tokens = self.login()

        self.staff.first_name = "Sender"
        self.staff.save()

        self.assertEqual(self.refresh(tokens["refresh_token"]).status_code, 200)

    def test_tokens_carry_no_readable_password_material(self):
        claims = RefreshToken(self.login()["refresh_token"]).payload

        self.assertNotIn(self.staff.password, json.dumps(claims))


@override_settings(AUTH_USER_CACHE_SECONDS=10)
class AccessTokenWithTheUserCacheTests(TokenTestCase):
    """The per-process user cache on: what another host sees after a change made elsewhere."""

    def change_password_elsewhere(self, password="a-new-pass-456"):
        # QuerySet.update sends no signal, as a change saved by another host's process would not
        # reach this process's cache.
        new = User(password="")
        new.set_password(password)
        User.objects.filter(pk=self.staff.pk).update(password=new.password)

    def later(self, seconds=11):
        return mock.patch("django.core.cache.backends.locmem.time.time", return_value=time.time() + seconds)

    def test_a_password_change_in_this_process_ends_access_tokens_at_once(self):
        access = self.login()["access_token"]
        self.assertEqual(self.me(access).status_code, 200)  # cached now

        self.staff.set_password("a-new-pass-456")
        self.staff.save()

        self.assertNotAuthenticated(self.me(access))

    def test_a_password_change_elsewhere_ends_access_tokens_when_the_user_is_read_again(self):
        access = self.login()["access_token"]
        self.assertEqual(self.me(access).status_code, 200)

        self.change_password_elsewhere()
        self.assertEqual(self.me(access).status_code, 200)  # the cached row, at most 10 s old
        with self.later():
            self.assertNotAuthenticated(self.me(access))

    def test_a_stale_token_is_refused_when_the_cache_holds_the_new_row(self):
        old_access = self.login()["access_token"]
        self.change_password_elsewhere()
        new_access = self.login("a-new-pass-456")["access_token"]
        self.assertEqual(self.me(new_access).status_code, 200)  # caches the new row

        self.assertNotAuthenticated(self.me(old_access))

    def test_a_new_token_is_accepted_while_the_cache_holds_the_old_row(self):
        old_access = self.login()["access_token"]
        self.assertEqual(self.me(old_access).status_code, 200)  # caches the old row
        self.change_password_elsewhere()

        new_access = self.login("a-new-pass-456")["access_token"]

        self.assertEqual(self.me(new_access).status_code, 200)  # read again, and it matches
        self.assertNotAuthenticated(self.me(old_access))

    def test_a_deactivation_elsewhere_ends_access_tokens_within_the_period(self):
        access = self.login()["access_token"]
        self.assertEqual(self.me(access).status_code, 200)

        User.objects.filter(pk=self.staff.pk).update(is_active=False)
        with self.later():
            self.assertNotAuthenticated(self.me(access))
