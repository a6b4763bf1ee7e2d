"""Every problem ``code`` the source can emit has its section on ``/problems`` (linksvc.web.problems):
a scan of linksvc/ for the shapes that name a code, so a new code without an explanation fails
here, with the file that emits it."""

from __future__ import annotations

import re
from pathlib import Path

from linksvc.ops import metrics
from linksvc.web.problems import PAGE_ONLY, PROBLEMS
from tests.support.env import ROOT

#: The ways linksvc's source names a problem code.
SHAPES = [
    r'problem\(\s*[^,()]+,\s*"([a-z_]+)"',
    r'(?:\w*Refused|BadRequest|_refuse|[A-Z]\w*Error)\(\s*(?:\d+\s*,\s*)?"([a-z_]+)"',
    r'\breason\s*(?::\s*str\s*)?=\s*"([a-z_]+)"',
    r'\b[1-5]\d\d:\s*"([a-z_]+)"',
]


def emitted_codes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "linksvc").rglob("*.py")):
        text = path.read_text()
        for shape in SHAPES:
            for m in re.finditer(shape, text):
                found.setdefault(m.group(1), set()).add(path.name)
    for reason in metrics.reason_codes():
        found.setdefault(reason, set()).add("errors.py")
    return found


def test_every_emitted_code_is_explained():
    found = emitted_codes()
    assert len(found) > 40  # the scan itself works
    missing = {
        c: sorted(files) for c, files in found.items() if c not in PROBLEMS and c not in PAGE_ONLY
    }
    assert not missing, (
        f"problem codes without a section on /problems — add them to linksvc/web/problems.py: {missing}"
    )


def test_the_scan_sees_a_new_code(tmp_path: Path):
    """The check can fail: a code written in one of the shapes is found."""
    sample = (
        'raise errors.RequestRefused("brand_new_code", "detail")\nproblem(418, "teapot_code", "")'
    )
    codes = {m.group(1) for shape in SHAPES for m in re.finditer(shape, sample)}
    assert codes == {"brand_new_code", "teapot_code"}
