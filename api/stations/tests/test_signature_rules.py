"""
Rules of the request signature beyond the seed's tests (docs/contract.md, section 2, and docs/design.md, Security).

Expected signatures are the sender's, `iot_tools.wire.sign`, which test_signature_vectors
checks against the standard library and the recorded vectors.
"""

import base64
import json
from unittest import mock

from django.test import SimpleTestCase, override_settings

from api.stations.services.utils import sign_chargeghar_main as sign_module
from api.stations.services.utils.sign_chargeghar_main import (
    SignChargeGharMain,
    get_signature_util,
)
from api.stations.tests.factories import SLOT_ERROR, TEST_SECRET, compact, full_payload
from iot_tools.wire import sign

NOW = 1_762_905_971
TOLERANCE = 300
OLD_SECRET = "previous-signing-secret-still-accepted-0123456789"


def frozen_clock(timestamp: int):
    """The signer sees `time.time()` as a fraction past `timestamp`, as a real clock would."""
    return mock.patch.object(sign_module, "time", mock.Mock(time=mock.Mock(return_value=timestamp + 0.75)))


class SigningTests(SimpleTestCase):
    def test_published_vector_signs_to_the_java_teams_value(self):
        signer = SignChargeGharMain(secret_key="test-secret-key")

        signature = signer.generate_signature('{"test":"data"}', 1698345600)

        self.assertEqual(signature, "zP7vZoJny6mCTFXApVbRbh6NLRchTWzrDOgMTEPftak=")

    def test_signature_is_44_characters_of_padded_standard_base64(self):
        signature = SignChargeGharMain(secret_key=TEST_SECRET).generate_signature(b"{}", NOW)

        self.assertEqual(len(signature), 44)
        self.assertTrue(signature.endswith("="))
        self.assertEqual(len(base64.b64decode(signature, validate=True)), 32)

    def test_bytes_and_str_payloads_sign_alike(self):
        signer = SignChargeGharMain(secret_key=TEST_SECRET)
        text = compact(full_payload(timestamp=NOW)).decode("utf-8")

        self.assertEqual(
            signer.generate_signature(text, NOW),
            signer.generate_signature(text.encode("utf-8"), NOW),
        )

    def test_chinese_text_is_signed_over_its_raw_utf8_bytes(self):
        payload = full_payload(timestamp=NOW, banks={1: ("40818048", 40)}, errors={1: SLOT_ERROR})
        body = compact(payload)
        self.assertIn("孔位异常：0X04".encode(), body)
        signer = SignChargeGharMain(secret_key=TEST_SECRET)

        signature = signer.generate_signature(body.decode("utf-8"), NOW)

        self.assertEqual(signature, sign(TEST_SECRET, body, NOW))
        # Not over the \\u-escaped form that a re-serializing verifier would see.
        escaped = json.dumps(payload, separators=(",", ":")).encode("ascii")
        self.assertNotEqual(signature, sign(TEST_SECRET, escaped, NOW))


class FreshnessTests(SimpleTestCase):
    def setUp(self):
        self.signer = SignChargeGharMain(secret_key=TEST_SECRET)
        self.body = compact(full_payload(timestamp=NOW))

    def validate_at(self, now: int, timestamp: int) -> tuple[bool, str]:
        signature = sign(TEST_SECRET, self.body, timestamp)
        with frozen_clock(now):
            return self.signer.validate_signature(self.body, timestamp, signature, time_tolerance=TOLERANCE)

    def test_timestamp_too_far_in_the_future_is_rejected_as_future(self):
        ok, reason = self.validate_at(NOW, NOW + TOLERANCE + 1)

        self.assertFalse(ok)
        self.assertIn("future", reason)
        self.assertNotIn("old", reason)

    def test_timestamp_too_old_is_rejected_as_too_old(self):
        ok, reason = self.validate_at(NOW, NOW - TOLERANCE - 1)

        self.assertFalse(ok)
        self.assertIn("too old", reason)

    def test_timestamp_exactly_at_the_tolerance_is_accepted_either_way(self):
        self.assertEqual(self.validate_at(NOW, NOW - TOLERANCE), (True, ""))
        self.assertEqual(self.validate_at(NOW, NOW + TOLERANCE), (True, ""))

    def test_freshness_is_checked_before_the_signature(self):
        # A stale request with a wrong signature is reported as stale: the sender's clock
        # is the thing to fix, and the reason must not hint at the expected signature.
        with frozen_clock(NOW):
            ok, reason = self.signer.validate_signature(
                self.body, NOW - 3600, "A" * 43 + "=", time_tolerance=TOLERANCE
            )

        self.assertFalse(ok)
        self.assertIn("too old", reason)


@override_settings(
    IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET,
    IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[OLD_SECRET],
)
class RotationTests(SimpleTestCase):
    body = b'{"type":"status","timestamp":1762905971,"device":{"serial_number":"1","status":"ONLINE"}}'

    def validate(self, signer, signature):
        with frozen_clock(NOW):
            return signer.validate_signature(self.body, NOW, signature)

    def test_signature_made_with_the_previous_secret_is_accepted(self):
        signature = sign(OLD_SECRET, self.body, NOW)

        self.assertEqual(self.validate(get_signature_util(), signature), (True, ""))

    def test_signature_made_with_the_current_secret_is_accepted(self):
        signature = sign(TEST_SECRET, self.body, NOW)

        self.assertEqual(self.validate(get_signature_util(), signature), (True, ""))

    def test_new_signatures_are_made_with_the_current_secret(self):
        self.assertEqual(
            get_signature_util().generate_signature(self.body, NOW),
            sign(TEST_SECRET, self.body, NOW),
        )

    def test_signature_made_with_an_unknown_secret_is_rejected(self):
        signature = sign("some-other-secret-the-sender-never-had-0000", self.body, NOW)

        self.assertEqual(self.validate(get_signature_util(), signature), (False, "Signature mismatch"))

    def test_an_explicit_secret_does_not_accept_the_configured_previous_ones(self):
        signature = sign(OLD_SECRET, self.body, NOW)

        ok, _ = self.validate(SignChargeGharMain(secret_key=TEST_SECRET), signature)

        self.assertFalse(ok)

    @override_settings(IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[])
    def test_previous_secret_is_rejected_once_removed_from_settings(self):
        signature = sign(OLD_SECRET, self.body, NOW)

        ok, _ = self.validate(get_signature_util(), signature)

        self.assertFalse(ok)

    @override_settings(IOT_SYSTEM_SIGNATURE_SECRET="")
    def test_missing_secret_refuses_to_build_a_signer(self):
        with self.assertRaises(ValueError):
            get_signature_util()


class GarbageSignatureTests(SimpleTestCase):
    def test_garbage_received_signatures_are_a_mismatch_not_an_exception(self):
        signer = SignChargeGharMain(secret_key=TEST_SECRET)
        body = b"{}"
        valid = sign(TEST_SECRET, body, NOW)
        garbage = [
            "",
            "签名签名签名",
            "é" * 44,
            valid[:-1] + "é",
            valid + "\x00",
            "\x00" * 44,
            "\udcff" * 44,  # a byte smuggled in by surrogateescape decoding
            "\ud800" + valid[1:],  # a lone surrogate: not encodable as UTF-8
            "A" * 10_000,
            " " + valid,
        ]
        for signature in garbage:
            with self.subTest(signature=signature[:50]):
                with frozen_clock(NOW):
                    result = signer.validate_signature(body, NOW, signature)
                self.assertEqual(result, (False, "Signature mismatch"))
