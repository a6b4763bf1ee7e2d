"""One owner per table: only the ledger writes ``links`` and ``link_events`` (issue 25).

A state change, its history event and its webhook are written together by the ledger's
transitions (consume, revoke, supersede, settle, note); a module that wrote those tables
itself would be a copy nothing keeps in step. This reads the source of ``linksvc/`` and
fails on any write of them elsewhere: raw SQL text (``UPDATE links``, ``INSERT INTO
link_events``, ``DELETE FROM links``) and SQLAlchemy Core (``sa.update(db.links)``,
``db.link_events.insert()``, also through a name bound to either table).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "linksvc"
#: The ledger's own package (paths under linksvc/): its modules write the tables.
OWNER = "links/ledger/"
#: Schema and partition DDL (moving rows between partitions included), allowed by name.
DDL = {"store/db.py", "store/partitions.py"}
TABLES = ("links", "link_events")

_RAW = re.compile(
    r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+[\"'`]?(?:links|link_events)\b[\"'`]?(?!_)",
    re.IGNORECASE,
)
_WRITES = {"update", "insert", "delete"}


def _is_table(node: ast.AST, aliases: set[str]) -> bool:
    """``db.links``, ``links``/``link_events`` as a bare name, or a name bound to one."""
    if isinstance(node, ast.Attribute):
        return node.attr in TABLES
    if isinstance(node, ast.Name):
        return node.id in TABLES or node.id in aliases
    return False


def _aliases(tree: ast.AST) -> set[str]:
    """Names bound to a table: ``_l = db.links``, ``_t, _l = db.sign_ins, db.links``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=False))
            else:
                pairs = [(target, node.value)]
            for t, v in pairs:
                if isinstance(t, ast.Name) and _is_table(v, set()):
                    names.add(t.id)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants: prose may name the SQL it explains."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(id(value))
    return found


def writes(source: str) -> list[str]:
    """Each write of ``links`` / ``link_events`` in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    prose = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in prose and _RAW.search(node.value):
                found.append(f"{node.lineno}: SQL {_RAW.search(node.value).group(0)!r}")  # type: ignore[union-attr]
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if _RAW.search(text):
                found.append(f"{node.lineno}: SQL {_RAW.search(text).group(0)!r}")  # type: ignore[union-attr]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name not in _WRITES:
                continue
            # sa.update(db.links) / update(_l) …
            if node.args and _is_table(node.args[0], aliases):
                found.append(f"{node.lineno}: {name}({ast.unparse(node.args[0])})")
            # db.links.update() …
            elif isinstance(node.func, ast.Attribute) and _is_table(node.func.value, aliases):
                found.append(f"{node.lineno}: {ast.unparse(node.func)}()")
    return found


def _modules() -> dict[str, Path]:
    """Every module of the package, by its path under linksvc/ (``links/ledger/consume.py``)."""
    return {p.relative_to(PACKAGE).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_owners_exist() -> None:
    # A renamed owner would otherwise pass the check below by being read as nobody's.
    assert set(_modules()) >= {OWNER + "consume.py", OWNER + "revocation.py", *DDL}


def test_only_the_ledger_writes_links_and_events() -> None:
    offenders = {
        name: found
        for name, path in _modules().items()
        if not name.startswith(OWNER) and name not in DDL
        for found in [writes(path.read_text())]
        if found
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        'X = "UPDATE links SET state = 1"',
        'X = "insert  into link_events (jti) VALUES (1)"',
        "X = f'DELETE FROM \"links\" WHERE exp < {cutoff}'",
        "import sqlalchemy as sa\nfrom . import db\nsa.update(db.links)",
        "from . import db\ndb.link_events.insert()",
        "from . import db\n_t, _l = db.sign_ins, db.links\nsa.delete(_l)",
        "from . import db\nl = db.links\nl.update()",
    ],
)
def test_the_check_sees_a_write(source: str) -> None:
    assert writes(source)


@pytest.mark.parametrize(
    "source",
    [
        '"""The ledger: UPDATE links … RETURNING."""',
        "sa.update(db.links_archive)",
        'X = "SELECT jti FROM links"',
        "sa.update(db.sign_ins)",
        'X = "DELETE FROM links_p20260101"',
    ],
)
def test_the_check_lets_reads_and_others_be(source: str) -> None:
    assert writes(source) == []
