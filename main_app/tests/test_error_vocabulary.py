"""
One error vocabulary: the codes defined in main_app/exceptions.py are the codes the contract
lists, and no other module makes up a code of its own.
"""

import ast
import re
from pathlib import Path

from django.conf import settings
from django.test import SimpleTestCase

from main_app import exceptions
from main_app.exceptions import ERROR_CODES, ApiError

ROOT = Path(settings.BASE_DIR)
CONTRACT = ROOT / "docs" / "contract.md"
CODE = re.compile(r"`([A-Z][A-Z_]+)`")


def contract_tables() -> dict[str, list[str]]:
    """The contract's tables, each as its rows, by the heading they stand under."""
    tables, heading = {}, None
    for line in CONTRACT.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|"):
            tables.setdefault(heading, []).append(line)
    return tables


def error_table_codes() -> list[str]:
    rows = contract_tables()["Error codes"][2:]  # below the header and its rule
    return [CODE.fullmatch(row.split("|")[1].strip()).group(1) for row in rows]


def project_sources():
    """The project's own Python files, tests and migrations aside."""
    for top in ("api", "main_app", "iot_tools"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "tests" in parts or "migrations" in parts:
                continue
            yield path


class ErrorVocabularyTests(SimpleTestCase):
    def test_every_class_has_a_code_of_its_own(self):
        classes = [
            value
            for value in vars(exceptions).values()
            if isinstance(value, type) and issubclass(value, ApiError)
        ]

        self.assertEqual(sorted(cls.__name__ for cls in ERROR_CODES.values()), sorted(c.__name__ for c in classes))
        self.assertEqual(len(ERROR_CODES), len(classes), "two classes share a code")

    def test_the_contract_lists_every_code_and_no_other(self):
        listed = error_table_codes()

        self.assertEqual(len(listed), len(set(listed)), "a code is listed twice")
        self.assertEqual(set(listed) - set(ERROR_CODES), set(), "listed in docs/contract.md, not defined")
        self.assertEqual(set(ERROR_CODES) - set(listed), set(), "defined, not listed in docs/contract.md")

    def test_the_contract_table_gives_each_code_its_status(self):
        for row in contract_tables()["Error codes"][2:]:
            code, status = (cell.strip() for cell in row.split("|")[1:3])
            code = CODE.fullmatch(code).group(1)
            with self.subTest(code):
                self.assertTrue(status.startswith(str(ERROR_CODES[code].status_code)), row)

    def test_every_code_the_other_tables_name_is_defined(self):
        for heading, rows in contract_tables().items():
            if heading == "Error codes":
                continue
            for row in rows:
                for code in CODE.findall(row):
                    with self.subTest(heading=heading, code=code):
                        self.assertIn(code, ERROR_CODES, row)

    def test_no_module_defines_an_error_class_or_spells_a_code_itself(self):
        error_classes = {cls.__name__ for cls in ERROR_CODES.values()}
        found = []
        for path in project_sources():
            if path == Path(exceptions.__file__):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.ClassDef):
                    bases = {base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases}
                    if bases & error_classes:
                        found.append(f"{where} class {node.name}")
                elif isinstance(node, ast.Constant) and node.value in ERROR_CODES:
                    found.append(f"{where} {node.value!r}")

        self.assertEqual(found, [], "use the classes of main_app.exceptions (and their .code)")
