"""The README is the front door and stays true for a newcomer who copies it, and so does the
manual behind it (docs/, SECURITY.md, CONTRIBUTING.md): the two commands at the top, under
200 lines, links that lead somewhere, one command form, a command-line reference naming
every command the app has, executable scripts and images that exist. The shell blocks that
run as printed are run by tests/system/test_docs_site.py."""

from __future__ import annotations

import ast
import os
import re

import click

from tests.support.env import ROOT

README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
#: Every page a reader may copy a command from.
PAGES = [
    README_PATH,
    ROOT / "SECURITY.md",
    ROOT / "CONTRIBUTING.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
CLI_PAGE = ROOT / "docs" / "cli.md"
FLASK_BUILTINS = {"routes", "shell", "run"}


def _commands(app) -> list[str]:
    def walk(cmd: click.Command, prefix: list[str]):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                if prefix or name not in FLASK_BUILTINS:
                    yield from walk(sub, [*prefix, name])
        else:
            yield " ".join(prefix)

    return list(walk(app.cli, []))


def test_the_readme_starts_with_the_two_commands():
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first and README.index(first.group(0)) < 400, "the first block is near the top"
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]


def test_the_readme_is_a_front_door():
    lines = README.count("\n")
    assert lines < 200, f"the README has {lines} lines; move the rest into docs/"


def test_the_readmes_links_lead_somewhere():
    """Relative links in the README name files of the repository (the manual's own links are
    checked by `mkdocs build --strict`)."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert "docs/index.md" in local and "SECURITY.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_cli_reference_lists_every_command(app):
    reference = CLI_PAGE.read_text()
    commands = _commands(app)
    assert {"init-db", "clients update", "keys rotate", "mint", "purge", "demo"} <= set(commands)
    missing = [c for c in commands if f"| `{c}" not in reference]
    assert not missing, f"add these to the command line reference, docs/cli.md: {missing}"


#: Pages about the container image and its operators, where `flask` is the image's own
#: (/opt/venv/bin on PATH; docs/deploy.md, "The image").
IMAGE_PAGES = {ROOT / "docs" / "deploy.md", ROOT / "docs" / "operations.md"}


def test_one_command_form():
    """A bare `flask --app app` picks up whatever `flask` is first on PATH."""
    bare = [
        f"{page.relative_to(ROOT)}: {line}"
        for page in PAGES
        if page not in IMAGE_PAGES
        for line in page.read_text().splitlines()
        if re.search(r"(?<![/\w])flask --app", line)
    ]
    assert not bare, bare


def test_documented_scripts_are_executable():
    scripts = {s for page in PAGES for s in re.findall(r"scripts/[\w.-]+\.py", page.read_text())}
    assert "scripts/verify_with_jwks.py" in scripts
    # The hooks of the manual's build are loaded by MkDocs, not run.
    scripts.discard("scripts/mkdocs_hooks.py")
    for script in scripts:
        path = ROOT / script
        assert path.exists(), script
        assert os.access(path, os.X_OK), f"{script} is documented as a command but not executable"
        assert path.read_text().startswith("#!/usr/bin/env python3"), script


def test_images_exist():
    shown = []
    for page in PAGES:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page.relative_to(ROOT)}: {image}"
            shown.append((page.parent / image).resolve())
    assert ROOT / "docs" / "screenshots" / "failure_used_phone.png" in shown


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_what_the_service_prints_uses_the_one_command_form():
    """Messages (`keys generate`'s "rotate to it after … s", start-up refusals, CLI errors)
    name `.venv/bin/flask`, as the manual does: a bare `flask` may be another one."""
    bare = []
    for path in [ROOT / "app.py", *sorted((ROOT / "linksvc").rglob("*.py"))]:
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in skip and re.search(r"(?<![/\w])flask --app", node.value):
                    bare.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not bare, bare


def test_pages_in_the_manual_are_in_its_nav():
    """A page in docs/ that the nav leaves out is built but unreachable (MkDocs only says so
    at INFO level). Pages another change adds are listed here until their nav line lands."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    pending: set[str] = set()
    assert not (pages - listed - pending), sorted(pages - listed - pending)
    generated = {"api/reference.md"}  # scripts/mkdocs_hooks.py
    assert not (listed - pages - generated), sorted(listed - pages - generated)
