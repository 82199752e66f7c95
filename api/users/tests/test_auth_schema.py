"""The OpenAPI schema says what the admin auth endpoints answer now."""

from django.test import TestCase


class AuthSchemaTests(TestCase):
    def setUp(self):
        self.paths = self.client.get("/api/schema/?format=json").json()["paths"]

    def responses(self, path):
        return self.paths[path]["post"]["responses"]

    def test_login_answers_one_401_for_every_refusal_and_429_when_locked_out(self):
        responses = self.responses("/api/admin/login")

        self.assertEqual(sorted(responses), ["200", "400", "401", "413", "429"])
        self.assertIn("not staff", responses["401"]["description"])
        self.assertIn("Retry-After", responses["429"]["description"])

    def test_refresh_answers_a_refresh_token_too(self):
        data = self.responses("/api/admin/refresh")["200"]["content"]["application/json"]["schema"]["$ref"]
        schema = self.client.get("/api/schema/?format=json").json()["components"]["schemas"]

        envelope = schema[data.rsplit("/", 1)[1]]
        data_schema = schema[envelope["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
        self.assertEqual(set(data_schema["properties"]), {"access_token", "refresh_token"})

    def test_logout_is_documented(self):
        self.assertEqual(sorted(self.responses("/api/admin/logout")), ["200", "400", "401"])
