"""The README stays true for a newcomer who copies it: one command form, a command-line
reference naming every command the app has, executable scripts, images that exist, and its
command-line examples and Python sample running as printed after `make run`."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from .support import ROOT, free_port, start_gunicorn

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


# -- as printed, after `make run` (issue 24 item 15) ---------------------------------------


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
    name `.venv/bin/flask`, as the README does: a bare `flask` may be another one."""
    bare = []
    for path in [ROOT / "app.py", *sorted((ROOT / "linksvc").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in skip and re.search(r"(?<![/\w])flask --app", node.value):
                    bare.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not bare, bare


def _venv_flask() -> Path:
    flask = ROOT / ".venv" / "bin" / "flask"
    assert flask.exists(), "the README's commands run the repository's .venv (make venv-test)"
    return flask


def _after_make_run(tmp_path: Path, base_url: str = "http://127.0.0.1:8000") -> dict[str, str]:
    """A fresh instance set up as `make run` sets it up (Makefile, target `run`): development,
    `init-db`, then `demo` writing the demo client's key to demo.env in the instance."""
    instance = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env.update(
        LINKSVC_ENV="development", LINKSVC_INSTANCE_PATH=str(instance), LINKSVC_BASE_URL=base_url
    )
    demo = ["demo", "--app-url", "http://127.0.0.1:5001", "--env-file", str(instance / "demo.env")]
    for args in (["init-db"], demo):
        subprocess.run(
            [str(_venv_flask()), "--app", "app", *args],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return env


def _shell_commands(block: str) -> list[str]:
    """The commands of a ```sh block, continuation lines joined."""
    return [c for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip()]


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_command_line_examples_run_as_printed_after_make_run(tmp_path):
    env = _after_make_run(tmp_path)
    section = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "the command line section has examples"
    outputs = []
    for command in (c for block in blocks for c in _shell_commands(block)):
        assert command.startswith(".venv/bin/flask --app app "), command
        out = _run(command, ROOT, env)
        assert out.returncode == 0, f"{command}\n{out.stdout}{out.stderr}"
        outputs.append(out.stdout)
    printed = "".join(outputs)
    assert "api_key:   lsk_" in printed  # clients create
    assert "http://127.0.0.1:8000/l/" in printed  # mint
    assert re.search(r"^cl_\w+ +demo ", printed, re.M)  # what make run made is there too

    keys = _run(".venv/bin/flask --app app keys generate", ROOT, env)
    assert keys.returncode == 0, keys.stderr
    assert "`.venv/bin/flask --app app keys rotate`" in keys.stdout, keys.stdout


@dataclass
class MadeRun:
    """A checkout where `make run` is going: linksvc served on ``port`` from a fresh instance
    set up as `make run` sets it up, the checkout's ``instance/`` and ``.venv/`` in place."""

    checkout: Path
    port: int
    env: dict[str, str]  # the shell's: no LINKSVC_* settings, as in a second terminal

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        # The README's commands name port 8000 and /tmp/link.json; this linksvc has a free
        # port, and this run a file no other test run writes.
        script = script.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        script = script.replace("/tmp/link.json", str(self.checkout / "link.json"))
        return _run(script, self.checkout, self.env)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeRun]:
    tmp_path = tmp_path_factory.mktemp("made_run")
    port = free_port()
    env = _after_make_run(tmp_path, base_url=f"http://127.0.0.1:{port}")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    (checkout / "instance").symlink_to(tmp_path / "instance")
    server = start_gunicorn(env, workers=1, port=port, log_path=tmp_path / "server.log")
    try:
        shell = {k: v for k, v in env.items() if not k.startswith("LINKSVC_")}
        yield MadeRun(checkout, port, shell)
    finally:
        server.stop()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_sample_runs_as_printed_after_make_run(made_run):
    """The lines before the sample, run as printed, the sample saved as example.py."""
    section = _section("Use it from Python")
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and code
    (made_run.checkout / "example.py").write_text(code.group(1))
    out = made_run.run("\n".join(_shell_commands(shell.group(1))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["user-42 {'next': '/inbox'}", "second try: used"]


def test_the_curl_examples_run_as_printed_after_make_run(made_run):
    """The worked example and the local download, with the demo client's key that `make run`
    wrote, not a placeholder to replace."""
    worked = re.search(r"```sh\n(.*?)```", _section("Worked example"), re.S)
    assert worked
    out = made_run.run("set -e\n" + worked.group(1))
    assert out.returncode == 0, out.stderr
    assert '"code":"used"' in out.stdout.replace(" ", "")
    assert '"state":"consumed"' in out.stdout.replace(" ", "")

    download = re.search(r"```sh\n(KEY=.*?)```", _section("Downloads"), re.S)
    assert download
    out = made_run.run("set -e\n" + download.group(1))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["HTTP/1.1 200 OK", "200 welcome.txt", "409"]
    assert (made_run.checkout / "welcome.txt").read_text().startswith("Hello from linksvc.")
