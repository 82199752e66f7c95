"""
The admin login API the IoT sender depends on (docs/contract.md, sections 1 and 3).

The sender posts `{"email", "password"}` to /api/admin/login, needs HTTP 200 and reads
`data.access_token` and `data.refresh_token`; a 401 anywhere means "log in again". So the
success shape is pinned key for key, and every failure must be the error envelope with a
stable code, never a 5xx, and must leave the user table exactly as it was.
"""

import base64
import json
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, TestCase, override_settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from api.stations.tests.factories import bearer_for, make_staff

User = get_user_model()

LOGIN = "/api/admin/login"
REFRESH = "/api/admin/refresh"
ME = "/api/admin/me"

EMAIL = "iot@chargeghar.test"
PASSWORD = "s3cret-pass-123"

ENVELOPE_KEYS = {"success", "message", "data"}
LOGIN_DATA_KEYS = {"user_id", "access_token", "refresh_token", "user"}
USER_KEYS = {"id", "email", "username", "is_staff", "is_superuser"}


def tampered(token: str) -> str:
    """The token with one character of its signature part changed."""
    header, payload, signature = token.split(".")
    # A middle character: the last one may only carry padding bits that decode the same.
    position = len(signature) // 2
    replacement = "A" if signature[position] != "A" else "B"
    signature = signature[:position] + replacement + signature[position + 1 :]
    return f"{header}.{payload}.{signature}"


def expired_access_token(user) -> str:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(minutes=1))
    return str(token)


def expired_refresh_token(user) -> str:
    token = RefreshToken.for_user(user)
    token.set_exp(lifetime=-timedelta(minutes=1))
    return str(token)


def unsigned_token(user) -> str:
    """A token claiming `alg: none`, the classic JWT forgery."""

    def segment(obj) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = dict(AccessToken.for_user(user).payload)
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


class ApiTestCase(TestCase):
    """Posting helpers and the envelope assertions every test here uses."""

    def setUp(self):
        self.client = APIClient()

    def post(self, path, body, *, content_type="application/json", **extra):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        return self.client.generic("POST", path, data=body, content_type=content_type, **extra)

    def login(self, body=None, **kwargs):
        return self.post(LOGIN, {"email": EMAIL, "password": PASSWORD} if body is None else body, **kwargs)

    def me(self, authorization=None):
        extra = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
        return self.client.get(ME, **extra)

    def assertError(self, response, status, code):
        """The failure envelope: status, code, a human message and nothing more."""
        self.assertEqual(response.status_code, status, response.content)
        self.assertEqual(response["Content-Type"], "application/json")
        body = response.json()
        self.assertLessEqual(set(body), {"success", "message", "error", "errors"}, body)
        self.assertIs(body["success"], False)
        self.assertEqual(body["error"], code)
        self.assertIsInstance(body["message"], str)
        self.assertTrue(body["message"])
        return body

    def assertNotAuthenticated(self, response):
        body = self.assertError(response, 401, "NOT_AUTHENTICATED")
        self.assertTrue(response["WWW-Authenticate"].startswith("Bearer"), response["WWW-Authenticate"])
        return body

    def snapshot_users(self):
        return list(User.objects.order_by("pk").values())


class AdminLoginTests(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.staff = make_staff(EMAIL, PASSWORD)
        self.users_before = self.snapshot_users()

    def assertUsersUnchanged(self):
        """No user created, deleted or modified (last_login included)."""
        self.assertEqual(self.snapshot_users(), self.users_before)

    # --- success ---------------------------------------------------------------------

    def test_staff_login_answers_exactly_the_documented_shape(self):
        response = self.login()

        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(response["Content-Type"], "application/json")
        body = response.json()
        self.assertEqual(set(body), ENVELOPE_KEYS)
        self.assertIs(body["success"], True)
        self.assertEqual(body["message"], "Admin login successful")
        self.assertEqual(set(body["data"]), LOGIN_DATA_KEYS)
        self.assertEqual(set(body["data"]["user"]), USER_KEYS)
        self.assertEqual(body["data"]["user_id"], self.staff.pk)
        self.assertEqual(
            body["data"]["user"],
            {
                "id": self.staff.pk,
                "email": EMAIL,
                "username": self.staff.username,
                "is_staff": True,
                "is_superuser": False,
            },
        )
        self.assertUsersUnchanged()

    def test_login_tokens_are_an_access_and_a_refresh_token_for_that_user(self):
        data = self.login().json()["data"]

        access = AccessToken(data["access_token"])
        refresh = RefreshToken(data["refresh_token"])
        self.assertEqual(str(access["user_id"]), str(self.staff.pk))
        self.assertEqual(str(refresh["user_id"]), str(self.staff.pk))

    def test_email_match_is_case_insensitive(self):
        response = self.login({"email": "IoT@ChargeGhar.TEST", "password": PASSWORD})

        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(response.json()["data"]["user_id"], self.staff.pk)
        self.assertUsersUnchanged()

    def test_sql_like_wildcards_in_the_email_match_nothing(self):
        # A case-insensitive match is a LIKE on SQLite; "_" and "%" must stay literal.
        for email in ("_ot@chargeghar.test", "%@chargeghar.test", "io%@chargeghar.test"):
            with self.subTest(email=email):
                response = self.login({"email": email, "password": PASSWORD})

                self.assertError(response, 401, "INVALID_CREDENTIALS")
        self.assertUsersUnchanged()

    def test_json_with_a_charset_parameter_is_accepted(self):
        response = self.login(content_type="application/json; charset=utf-8")

        self.assertEqual(response.status_code, 200, response.content)

    def test_login_needs_no_csrf_token(self):
        # The Java sender has no cookie jar and no CSRF token.
        client = Client(enforce_csrf_checks=True)

        response = client.post(
            LOGIN, json.dumps({"email": EMAIL, "password": PASSWORD}), content_type="application/json"
        )

        self.assertEqual(response.status_code, 200, response.content)

    def test_a_stale_bearer_header_does_not_stop_a_login(self):
        # The sender logs in again after a 401 and may still carry the expired token.
        response = self.login(HTTP_AUTHORIZATION=f"Bearer {expired_access_token(self.staff)}")

        self.assertEqual(response.status_code, 200, response.content)

    def test_body_of_exactly_the_limit_is_accepted(self):
        body = self._padded_login_body(settings.API_MAX_BODY_BYTES)

        response = self.login(body)

        self.assertEqual(response.status_code, 200, response.content)

    # --- credentials -----------------------------------------------------------------

    def test_wrong_password_and_unknown_email_get_the_same_answer(self):
        wrong_password = self.login({"email": EMAIL, "password": "not-the-password"})
        unknown_email = self.login({"email": "nobody@chargeghar.test", "password": PASSWORD})

        self.assertError(wrong_password, 401, "INVALID_CREDENTIALS")
        self.assertEqual(unknown_email.status_code, wrong_password.status_code)
        self.assertEqual(unknown_email.content, wrong_password.content)
        self.assertUsersUnchanged()

    def test_inactive_staff_gets_invalid_credentials(self):
        User.objects.filter(pk=self.staff.pk).update(is_active=False)
        self.users_before = self.snapshot_users()

        response = self.login()

        self.assertError(response, 401, "INVALID_CREDENTIALS")
        self.assertEqual(response.content, self.login({"email": EMAIL, "password": "wrong"}).content)
        self.assertUsersUnchanged()

    def test_non_staff_with_the_right_password_gets_the_answer_of_a_wrong_password(self):
        # A distinct answer would confirm that the password of a customer's account is right.
        make_staff("customer@chargeghar.test", "customer-pass-123", is_staff=False)
        self.users_before = self.snapshot_users()

        response = self.login({"email": "customer@chargeghar.test", "password": "customer-pass-123"})

        self.assertError(response, 401, "INVALID_CREDENTIALS")
        wrong = self.login({"email": "customer@chargeghar.test", "password": "wrong"})
        self.assertEqual(response.content, wrong.content)
        self.assertUsersUnchanged()

    def test_every_refused_login_answers_the_same_bytes(self):
        make_staff("customer@chargeghar.test", "customer-pass-123", is_staff=False)
        make_staff("off@chargeghar.test", "off-pass-123", is_active=False)
        self.users_before = self.snapshot_users()
        cases = {
            "unknown email": {"email": "nobody@chargeghar.test", "password": PASSWORD},
            "wrong password": {"email": EMAIL, "password": "not-the-password"},
            "inactive staff, right password": {"email": "off@chargeghar.test", "password": "off-pass-123"},
            "non-staff, right password": {"email": "customer@chargeghar.test", "password": "customer-pass-123"},
        }
        answers = {}
        for name, body in cases.items():
            with self.subTest(name):
                response = self.login(body)
                self.assertError(response, 401, "INVALID_CREDENTIALS")
                answers[name] = (response.status_code, response.content, sorted(response.headers))
        self.assertEqual(len(set(map(repr, answers.values()))), 1, answers)
        self.assertUsersUnchanged()

    def test_non_staff_with_a_wrong_password_learns_nothing_about_the_account(self):
        make_staff("customer@chargeghar.test", "customer-pass-123", is_staff=False)
        self.users_before = self.snapshot_users()

        response = self.login({"email": "customer@chargeghar.test", "password": "wrong"})

        self.assertError(response, 401, "INVALID_CREDENTIALS")
        self.assertUsersUnchanged()

    # --- malformed requests ----------------------------------------------------------

    def test_missing_or_mistyped_fields_are_validation_errors(self):
        cases = {
            "no fields": ({}, {"email", "password"}),
            "no password": ({"email": EMAIL}, {"password"}),
            "no email": ({"password": PASSWORD}, {"email"}),
            "email a number": ({"email": 123, "password": PASSWORD}, {"email"}),
            "email null": ({"email": None, "password": PASSWORD}, {"email"}),
            "email an object": ({"email": {"$ne": ""}, "password": PASSWORD}, {"email"}),
            "email not an address": ({"email": "iot", "password": PASSWORD}, {"email"}),
            "email too long": ({"email": "a" * 250 + "@x.test", "password": PASSWORD}, {"email"}),
            "password a list": ({"email": EMAIL, "password": []}, {"password"}),
            "password empty": ({"email": EMAIL, "password": ""}, {"password"}),
            "password with NUL": ({"email": EMAIL, "password": "a\x00b"}, {"password"}),
            "password too long": ({"email": EMAIL, "password": "x" * 129}, {"password"}),
        }
        for name, (body, fields) in cases.items():
            with self.subTest(name):
                response = self.login(body)

                error = self.assertError(response, 400, "VALIDATION_ERROR")
                self.assertEqual(set(error["errors"]), fields)
        self.assertUsersUnchanged()

    def test_numeric_password_is_read_as_text_and_checked(self):
        # DRF's CharField takes a JSON number as its text; here that text is just wrong.
        response = self.login({"email": EMAIL, "password": 12345678})

        self.assertError(response, 401, "INVALID_CREDENTIALS")
        self.assertUsersUnchanged()

    def test_empty_body_is_a_validation_error(self):
        response = self.login("")

        error = self.assertError(response, 400, "VALIDATION_ERROR")
        self.assertEqual(set(error["errors"]), {"email", "password"})
        self.assertUsersUnchanged()

    def test_bodies_that_are_not_a_json_object_are_invalid_json(self):
        cases = {
            "plain text": "email=iot@chargeghar.test&password=x",
            "truncated": '{"email": "iot@chargeghar.test", "password":',
            "array": json.dumps([{"email": EMAIL, "password": PASSWORD}]),
            "string": '"iot@chargeghar.test"',
            "number": "42",
            "null": "null",
            "NaN": '{"email": "iot@chargeghar.test", "password": NaN}',
            "not UTF-8": b'{"email": "iot@chargeghar.test", "password": "\xff\xfe"}',
        }
        for name, body in cases.items():
            with self.subTest(name):
                response = self.login(body)

                self.assertError(response, 400, "INVALID_JSON")
        self.assertUsersUnchanged()

    def test_deeply_nested_json_under_the_size_limit_is_invalid_json_not_a_server_error(self):
        # json.load raises RecursionError, not ValueError, past Python's recursion limit.
        depth = 20_000
        cases = {
            "nested array": "[" * depth + "]" * depth,
            "nested field": '{"email": ' + "[" * depth + "]" * depth + ', "password": "x"}',
        }
        for name, body in cases.items():
            with self.subTest(name):
                self.assertLess(len(body), settings.API_MAX_BODY_BYTES)

                response = self.login(body)

                self.assertError(response, 400, "INVALID_JSON")
        self.assertUsersUnchanged()

    def test_body_over_the_limit_is_payload_too_large_even_with_good_credentials(self):
        body = self._padded_login_body(settings.API_MAX_BODY_BYTES + 1)

        response = self.login(body)

        self.assertError(response, 413, "PAYLOAD_TOO_LARGE")
        self.assertUsersUnchanged()

    @override_settings(API_MAX_BODY_BYTES=100)
    def test_payload_limit_follows_the_setting(self):
        response = self.login(self._padded_login_body(101))

        self.assertError(response, 413, "PAYLOAD_TOO_LARGE")

    def test_wrong_content_types_are_refused_even_with_good_credentials(self):
        cases = {
            "text/plain": json.dumps({"email": EMAIL, "password": PASSWORD}),
            "application/x-www-form-urlencoded": f"email={EMAIL}&password={PASSWORD}",
            "application/xml": "<login/>",
        }
        for content_type, body in cases.items():
            with self.subTest(content_type):
                response = self.login(body, content_type=content_type)

                self.assertError(response, 400, "INVALID_CONTENT_TYPE")
        self.assertUsersUnchanged()

    def test_multipart_form_is_refused(self):
        response = self.client.post(LOGIN, {"email": EMAIL, "password": PASSWORD})

        self.assertError(response, 400, "INVALID_CONTENT_TYPE")
        self.assertUsersUnchanged()

    def test_get_is_method_not_allowed(self):
        response = self.client.get(LOGIN)

        self.assertError(response, 405, "METHOD_NOT_ALLOWED")
        self.assertUsersUnchanged()

    def _padded_login_body(self, size: int) -> bytes:
        """Good credentials, padded with an extra key to exactly `size` bytes."""
        empty = json.dumps({"email": EMAIL, "password": PASSWORD, "pad": ""}).encode()
        body = json.dumps({"email": EMAIL, "password": PASSWORD, "pad": "x" * (size - len(empty))}).encode()
        self.assertEqual(len(body), size)
        return body


class AdminMeTests(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.staff = make_staff(EMAIL, PASSWORD)

    def test_access_token_from_login_authenticates_me(self):
        access = self.login().json()["data"]["access_token"]

        response = self.me(f"Bearer {access}")

        self.assertEqual(response.status_code, 200, response.content)
        body = response.json()
        self.assertEqual(set(body), ENVELOPE_KEYS)
        self.assertIs(body["success"], True)
        self.assertEqual(
            body["data"],
            {
                "id": self.staff.pk,
                "email": EMAIL,
                "username": self.staff.username,
                "is_staff": True,
                "is_superuser": False,
            },
        )

    def test_no_token_is_not_authenticated(self):
        self.assertNotAuthenticated(self.me())

    def test_expired_token_is_not_authenticated(self):
        self.assertNotAuthenticated(self.me(f"Bearer {expired_access_token(self.staff)}"))

    def test_tampered_token_is_not_authenticated(self):
        token = str(AccessToken.for_user(self.staff))
        self.assertEqual(self.me(f"Bearer {token}").status_code, 200)  # the original works

        self.assertNotAuthenticated(self.me(f"Bearer {tampered(token)}"))

    def test_refresh_token_is_not_accepted_as_an_access_token(self):
        refresh = self.login().json()["data"]["refresh_token"]

        self.assertNotAuthenticated(self.me(f"Bearer {refresh}"))

    def test_malformed_authorization_headers_are_not_authenticated(self):
        token = str(AccessToken.for_user(self.staff))
        cases = {
            "scheme only": "Bearer",
            "two values": f"Bearer {token} extra",
            "other scheme": f"Token {token}",
            "garbage": "Bearer not-a-jwt",
            "alg none": f"Bearer {unsigned_token(self.staff)}",
            "empty": "",
        }
        for name, header in cases.items():
            with self.subTest(name):
                self.assertNotAuthenticated(self.me(header))

    def test_token_of_a_deactivated_user_is_not_authenticated(self):
        authorization = bearer_for(self.staff)
        User.objects.filter(pk=self.staff.pk).update(is_active=False)

        self.assertNotAuthenticated(self.me(authorization))

    def test_token_of_a_deleted_user_is_not_authenticated(self):
        authorization = bearer_for(self.staff)
        self.staff.delete()

        self.assertNotAuthenticated(self.me(authorization))

    def test_valid_token_of_a_non_staff_user_is_denied_permission(self):
        customer = make_staff("customer@chargeghar.test", is_staff=False)

        response = self.me(bearer_for(customer))

        self.assertError(response, 403, "PERMISSION_DENIED")


class AdminRefreshTests(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.staff = make_staff(EMAIL, PASSWORD)
        self.refresh_token = str(RefreshToken.for_user(self.staff))

    def refresh(self, token):
        return self.post(REFRESH, {"refresh_token": token})

    def test_refresh_answers_an_access_token_that_works_on_me(self):
        response = self.refresh(self.refresh_token)

        self.assertEqual(response.status_code, 200, response.content)
        body = response.json()
        self.assertEqual(set(body), ENVELOPE_KEYS)
        self.assertIs(body["success"], True)
        self.assertEqual(set(body["data"]), {"access_token", "refresh_token"})
        me = self.me(f"Bearer {body['data']['access_token']}")
        self.assertEqual(me.status_code, 200, me.content)
        self.assertEqual(me.json()["data"]["id"], self.staff.pk)

    def test_refresh_token_from_login_works(self):
        refresh = self.login().json()["data"]["refresh_token"]

        self.assertEqual(self.refresh(refresh).status_code, 200)

    def test_invalid_refresh_tokens_are_not_authenticated(self):
        cases = {
            "garbage": "not-a-jwt",
            "expired": expired_refresh_token(self.staff),
            "tampered": tampered(self.refresh_token),
            "access token": str(AccessToken.for_user(self.staff)),
            "alg none": unsigned_token(self.staff),
        }
        for name, token in cases.items():
            with self.subTest(name):
                self.assertNotAuthenticated(self.refresh(token))

    def test_refresh_for_a_deactivated_user_is_not_authenticated(self):
        User.objects.filter(pk=self.staff.pk).update(is_active=False)

        self.assertNotAuthenticated(self.refresh(self.refresh_token))

    def test_refresh_for_a_deleted_user_is_not_authenticated(self):
        self.staff.delete()

        self.assertNotAuthenticated(self.refresh(self.refresh_token))

    def test_refresh_for_a_user_who_lost_staff_is_denied_permission(self):
        User.objects.filter(pk=self.staff.pk).update(is_staff=False)

        self.assertError(self.refresh(self.refresh_token), 403, "PERMISSION_DENIED")

    def test_malformed_refresh_requests_are_refused_in_the_envelope(self):
        cases = {
            "no field": ({}, "application/json", 400, "VALIDATION_ERROR"),
            "token a list": ({"refresh_token": []}, "application/json", 400, "VALIDATION_ERROR"),
            "token null": ({"refresh_token": None}, "application/json", 400, "VALIDATION_ERROR"),
            "empty body": ("", "application/json", 400, "VALIDATION_ERROR"),
            "array": ([self.refresh_token], "application/json", 400, "INVALID_JSON"),
            "not JSON": ("refresh_token=x", "application/json", 400, "INVALID_JSON"),
            "text/plain": (
                json.dumps({"refresh_token": self.refresh_token}),
                "text/plain",
                400,
                "INVALID_CONTENT_TYPE",
            ),
            "too large": (
                {"refresh_token": self.refresh_token, "pad": "x" * settings.API_MAX_BODY_BYTES},
                "application/json",
                413,
                "PAYLOAD_TOO_LARGE",
            ),
        }
        for name, (body, content_type, status, code) in cases.items():
            with self.subTest(name):
                self.assertError(self.post(REFRESH, body, content_type=content_type), status, code)
