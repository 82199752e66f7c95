"""System checks that stop a production start with an unsafe IoT configuration (docs/design.md, Security)."""

from io import StringIO

from django.conf import settings
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import SimpleTestCase, override_settings

from api.stations.checks import check_iot_security

GOOD_SECRET = "k3Jq9-2vLx_8RmT4pZc7WnY1bHs6DfGa0eQuVoNiXy"
PRODUCTION = dict(
    DEBUG=False,
    IOT_SYSTEM_SIGNATURE_SECRET=GOOD_SECRET,
    IOT_SIGNATURE_VERIFICATION=True,
    IOT_SYSTEM_ALLOWED_IPS=["203.0.113.0/28"],
)


def production(**changes):
    return override_settings(**{**PRODUCTION, **changes})


class IoTSecurityCheckTests(SimpleTestCase):
    def ids(self) -> list[str]:
        return [message.id for message in check_iot_security()]

    @production()
    def test_good_production_configuration_has_no_messages(self):
        self.assertEqual(check_iot_security(), [])

    @production(IOT_SYSTEM_SIGNATURE_SECRET="")
    def test_missing_secret_is_an_error(self):
        messages = check_iot_security()

        self.assertEqual([m.id for m in messages], ["iot.E001"])
        self.assertIsInstance(messages[0], Error)

    @production(IOT_SYSTEM_SIGNATURE_SECRET=None)
    def test_secret_set_to_none_is_reported_as_missing(self):
        self.assertEqual(self.ids(), ["iot.E001"])

    @production(IOT_SYSTEM_SIGNATURE_SECRET="change-me-to-a-long-random-secret")
    def test_example_placeholder_secret_is_an_error(self):
        messages = check_iot_security()

        self.assertEqual([m.id for m in messages], ["iot.E002"])
        self.assertIsInstance(messages[0], Error)

    @production(IOT_SYSTEM_SIGNATURE_SECRET="x" * 31)
    def test_secret_shorter_than_32_characters_is_an_error(self):
        messages = check_iot_security()

        self.assertEqual([m.id for m in messages], ["iot.E003"])
        self.assertIsInstance(messages[0], Error)

    @production(IOT_SYSTEM_SIGNATURE_SECRET="x" * 32)
    def test_secret_of_exactly_32_characters_is_long_enough(self):
        self.assertEqual(self.ids(), [])

    @production(IOT_SIGNATURE_VERIFICATION=False)
    def test_verification_turned_off_is_an_error(self):
        messages = check_iot_security()

        self.assertEqual([m.id for m in messages], ["iot.E004"])
        self.assertIsInstance(messages[0], Error)

    @production(IOT_SYSTEM_ALLOWED_IPS=[])
    def test_empty_allowlist_is_a_warning_not_an_error(self):
        messages = check_iot_security()

        self.assertEqual([m.id for m in messages], ["iot.W001"])
        self.assertIsInstance(messages[0], Warning)
        self.assertNotIsInstance(messages[0], Error)

    @production(
        IOT_SYSTEM_SIGNATURE_SECRET="",
        IOT_SIGNATURE_VERIFICATION=False,
        IOT_SYSTEM_ALLOWED_IPS=[],
    )
    def test_every_problem_is_reported_at_once(self):
        self.assertEqual(sorted(self.ids()), ["iot.E001", "iot.E004", "iot.W001"])

    @production(
        DEBUG=True,
        IOT_SYSTEM_SIGNATURE_SECRET="",
        IOT_SIGNATURE_VERIFICATION=False,
        IOT_SYSTEM_ALLOWED_IPS=[],
    )
    def test_development_with_debug_on_has_no_messages(self):
        self.assertEqual(check_iot_security(), [])

    def test_messages_carry_a_hint_for_the_operator(self):
        with production(
            IOT_SYSTEM_SIGNATURE_SECRET="tiny-s3cret",
            IOT_SIGNATURE_VERIFICATION=False,
            IOT_SYSTEM_ALLOWED_IPS=[],
        ):
            messages = check_iot_security()
        for message in messages:
            with self.subTest(id=message.id):
                self.assertTrue(message.hint)
                self.assertNotIn("tiny-s3cret", message.msg, "the check must not echo the secret")


class CheckCommandTests(SimpleTestCase):
    """`manage.py check` runs the rules; the test settings silence only what they cause."""

    @production(SILENCED_SYSTEM_CHECKS=[], IOT_SYSTEM_SIGNATURE_SECRET="")
    def test_check_command_stops_on_a_missing_secret(self):
        with self.assertRaises(SystemCheckError) as raised:
            call_command("check", tags=["security"])

        self.assertIn("iot.E001", str(raised.exception))

    @production(SILENCED_SYSTEM_CHECKS=[])
    def test_check_command_passes_a_good_production_configuration(self):
        call_command("check", tags=["security"], stdout=StringIO())

    @production(SILENCED_SYSTEM_CHECKS=[], IOT_SIGNATURE_VERIFICATION=False)
    def test_check_command_stops_on_verification_turned_off(self):
        with self.assertRaises(SystemCheckError) as raised:
            call_command("check", tags=["security"])

        self.assertIn("iot.E004", str(raised.exception))

    def test_the_test_settings_pass_the_checks_by_silencing_only_what_they_need(self):
        # No secret and verification off (the seed's tests post unsigned bodies), with DEBUG
        # off as the test runners run: exactly the silenced messages, and nothing else.
        self.assertFalse(settings.DEBUG)
        self.assertEqual(settings.IOT_SYSTEM_SIGNATURE_SECRET, "")
        self.assertFalse(settings.IOT_SIGNATURE_VERIFICATION)
        self.assertEqual(sorted(self.ids_now()), sorted(settings.SILENCED_SYSTEM_CHECKS))
        call_command("check", tags=["security"], stdout=StringIO())

    @production(IOT_SYSTEM_SIGNATURE_SECRET="x" * 10)
    def test_a_message_the_test_settings_do_not_silence_still_stops_the_command(self):
        with self.assertRaises(SystemCheckError) as raised:
            call_command("check", tags=["security"])

        self.assertIn("iot.E003", str(raised.exception))

    @staticmethod
    def ids_now() -> list[str]:
        return [message.id for message in check_iot_security()]
