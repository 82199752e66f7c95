"""
Cross-implementation proof of the IoT request signature.

`contrib/signature_vectors/vectors.json` holds fixed vectors. They are checked three ways:
against the standard library directly, against our `SignChargeGharMain`, and (when a JDK is
installed) against `SignatureVectors.java`, which makes the same JDK calls as the Java sender.

The standard-library computation below is the one independent oracle of the signing rule
among the tests: every other test signs through `iot_tools.wire`, which it checks.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from unittest import mock

from django.test import SimpleTestCase

from api.stations.services.utils import sign_chargeghar_main as sign_module
from api.stations.services.utils.sign_chargeghar_main import SignChargeGharMain
from iot_tools import wire

# Settings are read lazily, so this still lets pytest run the file without a pytest.ini.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings_test")

PROJECT_ROOT = Path(__file__).resolve().parents[3]
VECTORS_DIR = PROJECT_ROOT / "contrib" / "signature_vectors"
VECTORS_FILE = VECTORS_DIR / "vectors.json"
JAVA_SOURCE = VECTORS_DIR / "SignatureVectors.java"

# The vector the Java team published; it must stay in the file exactly as given.
REFERENCE_VECTOR = {
    "secret": "test-secret-key",
    "payload": '{"test":"data"}',
    "timestamp": 1698345600,
    "signature": "zP7vZoJny6mCTFXApVbRbh6NLRchTWzrDOgMTEPftak=",
}


def load_vectors() -> list[dict]:
    with open(VECTORS_FILE, encoding="utf-8") as f:
        return json.load(f)


def tamper_one_character(payload: str) -> str:
    """Change exactly one character: the first non-ASCII one if any, else the middle one."""
    index = next((i for i, ch in enumerate(payload) if not ch.isascii()), len(payload) // 2)
    replacement = "x" if payload[index] != "x" else "y"
    tampered = payload[:index] + replacement + payload[index + 1 :]
    assert len(tampered) == len(payload) and tampered != payload
    return tampered


def frozen_clock(timestamp: int):
    """Make the signer's module see `time.time()` as (a fraction past) `timestamp`."""
    return mock.patch.object(
        sign_module, "time", mock.Mock(time=mock.Mock(return_value=timestamp + 0.75))
    )


class SignatureVectorFileTests(SimpleTestCase):
    def setUp(self):
        self.vectors = load_vectors()

    def test_reference_vector_from_the_java_team_is_present_unchanged(self):
        matches = [
            v for v in self.vectors if all(v[k] == REFERENCE_VECTOR[k] for k in REFERENCE_VECTOR)
        ]
        self.assertEqual(len(matches), 1, "reference vector missing or altered")

    def test_every_vector_is_well_formed(self):
        self.assertGreaterEqual(len(self.vectors), 7)
        names = [v["name"] for v in self.vectors]
        self.assertEqual(len(names), len(set(names)), "vector names must be unique")
        for v in self.vectors:
            with self.subTest(vector=v.get("name")):
                self.assertEqual(set(v), {"name", "secret", "payload", "timestamp", "signature"})
                self.assertRegex(v["name"], r"^\S+$")
                self.assertIsInstance(v["secret"], str)
                self.assertTrue(v["secret"])
                self.assertIsInstance(v["payload"], str)
                self.assertIs(type(v["timestamp"]), int)
                # Standard Base64 with padding: 44 characters for a 32-byte digest.
                self.assertEqual(len(v["signature"]), 44)
                try:
                    raw = base64.b64decode(v["signature"], validate=True)
                except binascii.Error as exc:
                    self.fail(f"signature is not standard Base64: {exc}")
                self.assertEqual(len(raw), 32)

    def test_the_stdlib_alone_gives_every_recorded_signature_and_wire_and_the_server_agree(self):
        for v in self.vectors:
            with self.subTest(vector=v["name"]):
                # The signing rule written out with hmac/hashlib/base64 only, no project code.
                message = v["payload"].encode("utf-8") + str(v["timestamp"]).encode("ascii")
                digest = hmac.new(v["secret"].encode("utf-8"), message, hashlib.sha256).digest()
                expected = base64.b64encode(digest).decode("ascii")

                self.assertEqual(expected, v["signature"])
                self.assertEqual(wire.sign(v["secret"], v["payload"].encode("utf-8"), v["timestamp"]), expected)
                with frozen_clock(v["timestamp"]):
                    result = SignChargeGharMain(secret_key=v["secret"]).validate_signature(
                        v["payload"].encode("utf-8"), v["timestamp"], expected
                    )
                self.assertEqual(result, (True, ""))

    def test_vectors_cover_the_risky_inputs(self):
        payloads = [v["payload"] for v in self.vectors]
        secrets = [v["secret"] for v in self.vectors]
        # The device error text, sent raw; its colon is U+FF1A FULLWIDTH COLON.
        chinese_error = "孔位异常\uff1a0X04"
        self.assertTrue(any(chinese_error in p for p in payloads), "raw Chinese body text")
        self.assertIn("{}", payloads)
        self.assertTrue(any(not s.isascii() for s in secrets), "non-ASCII secret")
        self.assertTrue(any(len(s) == 64 for s in secrets), "64-character secret")
        message_types = set()
        for p in payloads:
            body = json.loads(p)
            if isinstance(body, dict) and "type" in body:
                message_types.add(body["type"])
        self.assertLessEqual({"full", "returned", "status"}, message_types)


class PythonSignerAgreesWithVectorsTests(SimpleTestCase):
    def setUp(self):
        self.vectors = load_vectors()

    def test_generate_signature_matches_every_vector(self):
        for v in self.vectors:
            with self.subTest(vector=v["name"]):
                signer = SignChargeGharMain(secret_key=v["secret"])
                self.assertEqual(
                    signer.generate_signature(v["payload"], v["timestamp"]), v["signature"]
                )

    def test_generate_signature_matches_every_vector_for_utf8_bytes_payload(self):
        for v in self.vectors:
            with self.subTest(vector=v["name"]):
                signer = SignChargeGharMain(secret_key=v["secret"])
                self.assertEqual(
                    signer.generate_signature(v["payload"].encode("utf-8"), v["timestamp"]),
                    v["signature"],
                )

    def test_validate_signature_accepts_every_vector_at_its_own_time(self):
        for v in self.vectors:
            for payload in (v["payload"], v["payload"].encode("utf-8")):
                with self.subTest(vector=v["name"], payload_type=type(payload).__name__):
                    signer = SignChargeGharMain(secret_key=v["secret"])
                    with frozen_clock(v["timestamp"]):
                        result = signer.validate_signature(payload, v["timestamp"], v["signature"])
                    self.assertEqual(result, (True, ""))

    def test_validate_signature_rejects_every_vector_with_one_payload_character_changed(self):
        for v in self.vectors:
            tampered = tamper_one_character(v["payload"])
            for payload in (tampered, tampered.encode("utf-8")):
                with self.subTest(vector=v["name"], payload_type=type(payload).__name__):
                    signer = SignChargeGharMain(secret_key=v["secret"])
                    with frozen_clock(v["timestamp"]):
                        ok, message = signer.validate_signature(
                            payload, v["timestamp"], v["signature"]
                        )
                    self.assertFalse(ok)
                    self.assertEqual(message, "Signature mismatch")

    def test_validate_signature_rejects_a_vector_replayed_after_the_tolerance(self):
        v = load_vectors()[0]
        signer = SignChargeGharMain(secret_key=v["secret"])
        with frozen_clock(v["timestamp"] + 301):
            ok, message = signer.validate_signature(v["payload"], v["timestamp"], v["signature"])
        self.assertFalse(ok)
        self.assertIn("too old", message)


class JavaSignerAgreesWithVectorsTests(SimpleTestCase):
    def setUp(self):
        self.java = shutil.which("java")
        if self.java is None:
            self.skipTest("no JDK installed: `java` not found on PATH")
        self.vectors = load_vectors()

    def run_java(self, vectors_path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.java, str(JAVA_SOURCE), str(vectors_path)],
            cwd=PROJECT_ROOT,
            check=False,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=120,
        )

    def test_java_and_python_agree_on_every_vector(self):
        result = self.run_java(VECTORS_FILE)
        report = f"exit={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        self.assertEqual(result.returncode, 0, report)
        lines = result.stdout.splitlines()
        self.assertFalse([line for line in lines if line.startswith("FAIL")], report)
        for v in self.vectors:
            with self.subTest(vector=v["name"]):
                self.assertIn(f"OK {v['name']}", lines, report)

    def test_java_checker_reports_a_wrong_signature(self):
        # Guards the guard: the Java checker must not print OK for everything.
        vectors = load_vectors()
        target = vectors[1]
        raw = bytearray(base64.b64decode(target["signature"]))
        raw[0] ^= 0x01
        target["signature"] = base64.b64encode(bytes(raw)).decode("ascii")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vectors.json"
            path.write_text(json.dumps(vectors, ensure_ascii=False), encoding="utf-8")
            result = self.run_java(path)
        report = f"exit={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        self.assertEqual(result.returncode, 1, report)
        lines = result.stdout.splitlines()
        self.assertTrue(
            any(line.startswith(f"FAIL {target['name']} expected=") for line in lines), report
        )
        self.assertIn(f"OK {vectors[0]['name']}", lines, report)
