"""
Log lines cannot be forged: whatever a request carries (its path, a serial in its body, a
header) reaches the project's log handlers with CR, LF and other control characters
escaped, so every line of a log file is the start of a record the code wrote, or an
indented continuation of one (a traceback).

These tests go through the handlers the settings configure, with their formatter and
filters; `assertLogs` would bypass both.
"""

import io
import logging
import re
from contextlib import contextmanager

from django.conf import settings
from django.test import SimpleTestCase, TestCase, override_settings

from api.stations.tests.factories import TEST_SECRET, SenderClient, compact, make_staff, status_payload
from main_app.logging import EscapeControlCharacters, escape_control
from main_app.settings import logging_config

FORGED = "[ERROR] 2026-01-01 00:00:00,000 api.stations admin logged in"
# A line of the project's format: "[LEVEL] date time logger message".
RECORD_START = re.compile(r"^\[[A-Z]+\] \d{4}-\d\d-\d\d ")


def configured_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers the settings gave `logger` (not those a test runner adds)."""
    return [handler for handler in logger.handlers if type(handler).__module__.startswith("logging")]


@contextmanager
def project_log_output(*logger_names: str):
    """The text the project's console handler writes for these loggers, at every level."""
    stream = io.StringIO()
    loggers = [logging.getLogger(name) for name in logger_names]
    (console,) = {handler for logger in loggers for handler in configured_handlers(logger)}
    saved_stream, saved_level = console.stream, console.level
    saved_logger_levels = [logger.level for logger in loggers]
    console.setStream(stream)
    console.setLevel(logging.DEBUG)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        console.setStream(saved_stream)
        console.setLevel(saved_level)
        for logger, level in zip(loggers, saved_logger_levels, strict=True):
            logger.setLevel(level)


def assertEveryLineIsARecordOrIndented(test, text: str):
    test.assertTrue(text, "nothing was logged")
    for line in text.splitlines():
        test.assertTrue(
            RECORD_START.match(line) or line.startswith("    "), f"a forged line in the log: {line!r}"
        )
    test.assertNotIn("\r", text)


class ConfigurationTests(SimpleTestCase):
    def test_every_handler_of_the_project_escapes(self):
        for to_file in (True, False):
            config = logging_config(to_file=to_file, level="INFO", console_level="INFO", request_level="ERROR")
            for name, handler in config["handlers"].items():
                with self.subTest(to_file=to_file, handler=name):
                    filters = [config["filters"][filter_name] for filter_name in handler.get("filters", [])]
                    self.assertIn(
                        "main_app.logging.EscapeControlCharacters", [f.get("()") for f in filters], handler
                    )

    def test_the_running_handlers_have_the_filter(self):
        for name in ("api", "main_app", "django.request", "iot_tools"):
            handlers = configured_handlers(logging.getLogger(name))
            self.assertTrue(handlers, name)
            for handler in handlers:
                with self.subTest(logger=name, handler=handler):
                    self.assertTrue(any(isinstance(f, EscapeControlCharacters) for f in handler.filters))


@override_settings(
    IOT_SIGNATURE_VERIFICATION=True,
    IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET,
    IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[],
    IOT_SYSTEM_ALLOWED_IPS=[],
    IOT_TRUSTED_PROXIES=[],
)
class RequestValuesInLogsTests(TestCase):
    def test_a_newline_in_the_path_does_not_start_a_log_line(self):
        with project_log_output("main_app") as output:
            response = self.client.post(
                "/api/internal/stations/data%0A" + FORGED.replace(" ", "%20") + "%0D%0Aagain",
                data=b"{}",
                content_type="application/json",
            )

        self.assertEqual(response.status_code, 403)
        text = output.getvalue()
        self.assertIn("MISSING_HEADERS", text)
        self.assertIn(r"\n[ERROR]", text)
        self.assertIn(r"\r\nagain", text)
        assertEveryLineIsARecordOrIndented(self, text)

    def test_a_newline_in_a_body_serial_does_not_start_a_log_line(self):
        payload = status_payload("ONLINE", "864601069946994\n" + FORGED)
        sender = SenderClient(make_staff())

        with project_log_output("api", "main_app") as output:
            response = sender.post(compact(payload), HTTP_USER_AGENT="sender\n" + FORGED)

        self.assertEqual(response.status_code, 400, response.content)
        self.assertEqual(response.json()["error"], "VALIDATION_ERROR")
        text = output.getvalue()
        self.assertIn(r"864601069946994\n[ERROR]", text, "the refusal is logged with the serial")
        assertEveryLineIsARecordOrIndented(self, text)


class FilterTests(SimpleTestCase):
    def format(self, *args, exc_info=None, msg="value %s", **kwargs) -> str:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(settings.LOGGING["formatters"]["verbose"]["format"], style="{"))
        handler.addFilter(EscapeControlCharacters())
        record = logging.LogRecord("api.test", logging.WARNING, __file__, 1, msg, args or None, exc_info, **kwargs)
        handler.handle(record)
        return stream.getvalue()

    def test_control_characters_are_escaped_readably(self):
        self.assertEqual(escape_control("a\nb\rc\td\x1b[31me\x00f\x7fg\u2028h\x85"), r"a\nb\rc\td\x1b[31me\x00f\x7fg\u2028h\x85")
        self.assertEqual(escape_control("Kathmandu 孔位异常"), "Kathmandu 孔位异常")

    def test_arguments_of_any_type_and_the_message_itself_are_escaped(self):
        class Shifty:
            def __str__(self):
                return "x\n" + FORGED

        for args, msg in (
            (("x\n" + FORGED,), "value %s"),
            ((Shifty(),), "value %s"),
            ((ValueError("x\n" + FORGED),), "value %s"),
            (({"v": "x\n" + FORGED},), "value %(v)s"),
            ((), "value x\n" + FORGED),
        ):
            with self.subTest(args=args, msg=msg):
                text = self.format(*args, msg=msg)
                self.assertEqual(text.count("\n"), 1, text)
                self.assertIn(r"x\n[ERROR]", text)

    def test_numbers_keep_their_formatting(self):
        self.assertIn("took 12.50 ms for 3", self.format(12.5, 3, msg="took %.2f ms for %d"))

    def test_a_traceback_is_kept_but_its_lines_are_indented(self):
        try:
            raise ValueError("bad serial 1\n" + FORGED)
        except ValueError:
            import sys

            text = self.format("x", exc_info=sys.exc_info())

        self.assertIn("Traceback (most recent call last):", text)
        self.assertIn("ValueError: bad serial 1", text)
        lines = text.splitlines()
        self.assertTrue(RECORD_START.match(lines[0]), lines[0])
        for line in lines[1:]:
            self.assertTrue(line.startswith("    "), line)

    def test_two_handlers_escape_once(self):
        first, second = io.StringIO(), io.StringIO()
        logger = logging.getLogger("main_app.tests.two_handlers")
        logger.propagate = False
        self.addCleanup(setattr, logger, "propagate", True)
        for stream in (first, second):
            handler = logging.StreamHandler(stream)
            handler.addFilter(EscapeControlCharacters())
            logger.addHandler(handler)
            self.addCleanup(logger.removeHandler, handler)
        try:
            raise ValueError("boom\nagain")
        except ValueError:
            logger.exception("value %s", "a\nb")

        self.assertEqual(first.getvalue(), second.getvalue())
        self.assertIn(r"value a\nb", first.getvalue())
        self.assertNotIn(r"\\n", first.getvalue(), "escaped twice")
        self.assertEqual(first.getvalue().splitlines()[1], "    Traceback (most recent call last):")
