"""
`body.decode` takes orjson's way for plain JSON and the standard library's for the rest:
both ways must give the same value, and the same error, for any body.
"""

import json

from django.test import SimpleTestCase
from hypothesis import given, settings
from hypothesis import strategies as st

from api.stations.ingest import body as body_module
from api.stations.ingest.body import decode


def _exact(raw: bytes):
    return body_module._decode_exactly(raw)


def _typed(value) -> str:
    # json.dumps tells 1 from 1.0 and -0.0 from 0.0, which == does not.
    return json.dumps(value, ensure_ascii=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)


class DecodeTests(SimpleTestCase):
    @settings(max_examples=300, deadline=None)
    @given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
    def test_any_json_value_decodes_as_the_standard_library_decodes_it(self, value, ascii_only, indent):
        raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
        fast, exact = decode(raw), _exact(raw)
        self.assertEqual(fast.error, exact.error)
        self.assertEqual(_typed(fast.data), _typed(exact.data))

    def test_integers_beyond_64_bits_stay_exact(self):
        for text in (
            b'{"a": 18446744073709551617}',
            b'{"a":-9223372036854775809}',
            b'[1,\n  123456789012345678901234567890]',
            b"99999999999999999999",
            b'{"m": {"n": [0, 100000000000000000000]}}',
        ):
            with self.subTest(text=text):
                self.assertEqual(_typed(decode(text).data), _typed(json.loads(text)))
                self.assertIsInstance(json.loads(text), (dict, list, int))

    def test_what_json_allows_but_the_database_cannot_store_is_refused_with_its_reason(self):
        cases = {
            b'{"a": "\\u0000"}': "The body contains a NUL character.",
            b'{"a": "\x00"}': "The body contains a NUL character.",
            b'{"a": "\\ud800"}': "The body contains an unpaired surrogate escape.",
            b'{"a": NaN}': "The body is not valid JSON.",
            b'{"a": 1e999}': "The body is not valid JSON.",
            b"\xef\xbb\xbf{}": "The body is not valid JSON.",
            b'{"a": "\xff"}': "The body is not valid UTF-8.",
            b"[" * 33 + b"]" * 33: "The body is nested too deeply.",
            # Past the decoders' own recursion limits.
            b"[" * 2000 + b"]" * 2000: "The body is not valid JSON.",
            b'{"a": 1,}': "The body is not valid JSON.",
        }
        for raw, error in cases.items():
            with self.subTest(raw=raw[:40]):
                self.assertEqual(decode(raw).error, error)
                self.assertEqual(_exact(raw).error, error)
                self.assertIsNone(decode(raw).data)

    def test_a_valid_surrogate_pair_escape_decodes_to_its_character(self):
        self.assertEqual(decode(b'{"a": "\\ud83d\\ude00"}').data, {"a": "\U0001f600"})
        self.assertEqual(decode(b"[" * 32 + b"]" * 32).error, None)
