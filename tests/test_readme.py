"""The README stays true for a newcomer who copies it: one command form, a command-line
reference naming every command the app has, executable scripts, images that exist."""

from __future__ import annotations

import os
import re

import click

from .support import ROOT

README = (ROOT / "README.md").read_text()
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


def test_the_cli_reference_lists_every_command(app):
    section = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    commands = _commands(app)
    assert {"init-db", "clients update", "keys rotate", "mint", "purge", "demo"} <= set(commands)
    missing = [c for c in commands if f"| `{c}" not in section]
    assert not missing, f"add these to the README's command line reference: {missing}"


def test_one_command_form():
    """A bare `flask --app app` picks up whatever `flask` is first on PATH."""
    bare = [line for line in README.splitlines() if re.search(r"(?<![/\w])flask --app", line)]
    assert not bare, bare


def test_documented_scripts_are_executable():
    scripts = set(re.findall(r"scripts/[\w.-]+\.py", README))
    assert "scripts/verify_with_jwks.py" in scripts
    for script in scripts:
        path = ROOT / script
        assert path.exists(), script
        assert os.access(path, os.X_OK), f"{script} is documented as a command but not executable"
        assert path.read_text().startswith("#!/usr/bin/env python3"), script


def test_images_exist():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "docs/screenshots/failure_used_phone.png" in images
    for image in images:
        assert (ROOT / image).is_file(), image
