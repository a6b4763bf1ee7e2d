"""The dependency set is pinned, complete and consistent — the part of a dependency audit
that needs no vulnerability database (SECURITY.md, "Dependencies").

- every requirement line is ``name==version`` (no ranges, no URLs, no unpinned names);
- no package is pinned twice to different versions;
- the pinned set is closed: every dependency of a pinned package is pinned too, so a
  fresh install resolves to exactly the reviewed versions;
- what is installed is what is pinned, and ``pip check`` finds no broken requirement.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FILES = ["requirements.txt", "requirements-test.txt"]
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")


def _lines(name: str) -> list[tuple[str, int, str]]:
    out = []
    for n, line in enumerate((ROOT / name).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            out.append((name, n, line))
    return out


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for _, _, line in (x for f in FILES for x in _lines(f)):
        name, version = line.split("==")
        found[canonicalize_name(name)] = version
    return found


def test_every_requirement_is_pinned_exactly():
    bad = [
        f"{f}:{n}: {line}"
        for fname in FILES
        for f, n, line in _lines(fname)
        if not PIN.fullmatch(line)
    ]
    assert bad == [], "pin with ==: " + "; ".join(bad)


def test_no_package_is_pinned_twice_differently():
    seen: dict[str, tuple[str, str]] = {}
    clashes = []
    for f, n, line in (x for fname in FILES for x in _lines(fname)):
        name, version = line.split("==")
        key = canonicalize_name(name)
        if key in seen and seen[key][0] != version:
            clashes.append(f"{name}: {seen[key][1]} pins {seen[key][0]}, {f}:{n} pins {version}")
        seen.setdefault(key, (version, f"{f}:{n}"))
    assert clashes == []


def unpinned_dependencies(pinned: dict[str, str]) -> list[str]:
    missing = []
    for name in pinned:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # reported by test_installed_versions_are_the_pinned_ones
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra, or another platform or Python
            if canonicalize_name(req.name) not in pinned:
                missing.append(f"{canonicalize_name(req.name)} (needed by {name})")
    return sorted(set(missing))


def test_pinned_set_is_closed_under_dependencies():
    assert unpinned_dependencies(pins()) == [], "pin these too"


def test_the_closure_check_can_fail():
    without = {k: v for k, v in pins().items() if k not in ("anyio", "greenlet")}
    assert {"anyio (needed by schemathesis)", "greenlet (needed by playwright)"} <= set(
        unpinned_dependencies(without)
    )


def test_installed_versions_are_the_pinned_ones():
    wrong = []
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed")
            continue
        if installed != version:
            wrong.append(f"{name}: installed {installed}, pinned {version}")
    assert wrong == []


def test_pip_check_finds_no_broken_requirement():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
