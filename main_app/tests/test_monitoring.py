"""
contrib/monitoring: the alert rules pass promtool's check and their unit tests, and the rules
and the dashboard name only series the service exports.

promtool comes with Debian's `prometheus` package. Where it is missing the promtool tests skip
with the reason; REQUIRE_PROMETHEUS=1 (set by .ci/run once it has installed the package)
turns the skip into a failure.
"""

import json
import os
import re
import shutil
import subprocess
import unittest
from pathlib import Path

import yaml
from django.conf import settings
from django.test import SimpleTestCase

from main_app import metrics

MONITORING = Path(settings.BASE_DIR) / "contrib" / "monitoring"
PROMTOOL = shutil.which("promtool")
REQUIRED = os.environ.get("REQUIRE_PROMETHEUS") == "1"
# Sample names a histogram adds to its family name.
SUFFIXES = ("_bucket", "_count", "_sum")
# PromQL words and functions that look like names.
NOT_SERIES = {
    "sum", "max", "min", "by", "rate", "increase", "histogram_quantile", "le", "or", "and", "up",
    "type", "code", "status", "outcome", "job", "instance",
}


def promtool_or_skip(test):
    if PROMTOOL is None and not REQUIRED:
        return unittest.skip("promtool is not installed (Debian's prometheus package)")(test)
    return test


def series_named_in(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {name for name in names if name not in NOT_SERIES and not re.fullmatch(r"[0-9e]+", name)}


def exported(name: str) -> bool:
    return name in metrics.SERIES or any(
        name.endswith(suffix) and name[: -len(suffix)] in metrics.SERIES for suffix in SUFFIXES
    )


class PromtoolTests(SimpleTestCase):
    def promtool(self, *arguments) -> str:
        self.assertIsNotNone(PROMTOOL, "REQUIRE_PROMETHEUS=1 but promtool is not installed")
        result = subprocess.run(
            [PROMTOOL, *arguments], cwd=MONITORING, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout + result.stderr

    @promtool_or_skip
    def test_the_rules_are_valid(self):
        self.assertIn("SUCCESS", self.promtool("check", "rules", "rules.yml"))

    @promtool_or_skip
    def test_the_alerts_fire_when_their_unit_tests_say(self):
        self.assertIn("SUCCESS", self.promtool("test", "rules", "rules_test.yml"))


class SeriesTests(SimpleTestCase):
    def test_every_alert_names_exported_series_and_has_its_runbook_section(self):
        rules = yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"][0]["rules"]
        deploy = (Path(settings.BASE_DIR) / "docs" / "deploy.md").read_text()
        self.assertGreaterEqual(len(rules), 10)
        for rule in rules:
            with self.subTest(rule["alert"]):
                unknown = {name for name in series_named_in(rule["expr"]) if not exported(name)}
                self.assertEqual(unknown, set())
                self.assertIn(f"#### {rule['alert']}\n", deploy)
                self.assertEqual(rule["annotations"]["runbook"], f"docs/deploy.md#{rule['alert'].lower()}")

    def test_every_alert_is_unit_tested(self):
        rules = yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"][0]["rules"]
        tests = yaml.safe_load((MONITORING / "rules_test.yml").read_text())["tests"]
        tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
        self.assertEqual({rule["alert"] for rule in rules} - tested, set())

    def test_the_dashboard_names_exported_series_only(self):
        dashboard = json.loads((MONITORING / "dashboard.json").read_text())
        expressions = [
            target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
        ]
        self.assertGreaterEqual(len(expressions), 15)
        for expression in expressions:
            with self.subTest(expression):
                unknown = {name for name in series_named_in(expression) if not exported(name)}
                self.assertEqual(unknown, set())
        shown = {name for expression in expressions for name in series_named_in(expression)}
        for name in metrics.SERIES:
            with self.subTest(series=name):
                self.assertTrue(any(shown_name.startswith(name) for shown_name in shown), name)
