"""Each SQL statement is written once (issue 25): the same statement text in two places is
two copies that nothing keeps in step. This reads every string constant of ``linksvc/``
that is a statement (SELECT, INSERT, UPDATE, DELETE, WITH) and fails on any text, white
space folded, that stands in two places. Statements built with SQLAlchemy Core are code,
not text: ``duplicates`` watches those."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "linksvc"
_STATEMENT = re.compile(r"(?:SELECT|INSERT|UPDATE|DELETE|WITH)\s", re.IGNORECASE)


def statements(sources: dict[str, str]) -> dict[str, list[str]]:
    """Statement text (white space folded) → where it stands (``name:line``)."""
    found: dict[str, list[str]] = defaultdict(list)
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = " ".join(node.value.split())
                if _STATEMENT.match(text):
                    found[text].append(f"{name}:{node.lineno}")
    return found


def twice(sources: dict[str, str]) -> dict[str, list[str]]:
    return {text: where for text, where in statements(sources).items() if len(where) > 1}


def _sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_has_statements_to_check() -> None:
    # A check that found no statement at all would pass for the wrong reason.
    assert len(statements(_sources())) >= 5


def test_no_statement_text_stands_twice() -> None:
    assert twice(_sources()) == {}


def test_the_check_sees_a_copy() -> None:
    a = 'LOCK = sa.text("SELECT pg_advisory_xact_lock(:k)")'
    b = 'conn.execute(sa.text("""SELECT  pg_advisory_xact_lock(:k)\n"""))'
    assert twice({"a.py": a, "b.py": b}) == {
        "SELECT pg_advisory_xact_lock(:k)": ["a.py:1", "b.py:1"]
    }
    assert twice({"a.py": a, "b.py": 'X = "SELECT 1 FROM links"'}) == {}
