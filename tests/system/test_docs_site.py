"""The manual (mkdocs.yml, docs/) builds strictly and offline, its generated pages are the
code's own, and every shell block that says it runs is run, as printed.

Convention: a fenced ``sh`` block whose title starts with "Runs as printed"
(```` ```sh title="Runs as printed, with make run going" ````; Material shows the title
above the block, so the reader sees the claim) is run here, in the README and in every page
of docs/, after a set-up like `make run`'s: a fresh instance, `init-db`, the demo client, and
linksvc served on a free port that replaces 127.0.0.1:8000 in the block. A fenced block of
another language titled with a file name (```` ```python title="example.py" ````) is saved
under that name first, as the page asks the reader to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linksvc import config
from linksvc.web import openapi
from tests.support.env import ROOT, free_port
from tests.support.servers import start_gunicorn

MKDOCS = ROOT / ".venv" / "bin" / "mkdocs"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNABLE = "Runs as printed"


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    title: str
    body: str

    @property
    def name(self) -> str:
        return str(self.page.relative_to(ROOT))


def blocks(page: Path) -> list[Block]:
    found = []
    for lang, info, body in FENCE.findall(page.read_text()):
        title = re.search(r'title="([^"]*)"', info)
        found.append(Block(page, lang, title.group(1) if title else "", body))
    return found


def runnable() -> list[Block]:
    return [b for p in PAGES for b in blocks(p) if b.lang == "sh" and b.title.startswith(RUNNABLE)]


# -- the build --------------------------------------------------------------------------------


def _build(cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("LINKSVC_")}
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fresh_clone(tmp_path: Path) -> Path:
    """The repository as a fresh clone of this working tree has it: the files git tracks or
    would track, nothing ignored (no .venv, instance/, compiled catalogs or site/)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    clone = tmp_path / "clone"
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manual, built strictly from a fresh clone (issue 26: "builds strictly from a fresh
    clone"), with the repository's .venv."""
    tmp_path = tmp_path_factory.mktemp("site")
    clone = _fresh_clone(tmp_path)
    assert not (clone / "instance").exists() and not (clone / ".venv").exists()
    out = _build(clone, tmp_path / "site")
    assert out.returncode == 0, out.stderr
    return tmp_path / "site"


def test_the_manual_builds_strictly_and_fetches_nothing(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 20
    outside = re.compile(r"""(?:src|href)=["']?(?:https?:)?//(?!127\.0\.0\.1)""")
    for page in pages:
        html = page.read_text()
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page
        # Links to other sites are fine; nothing the page loads by itself may come from one.
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", html):
            if 'rel="alternate"' in tag or "rel=alternate" in tag:
                continue
            assert not outside.search(tag), f"{page.relative_to(site)} loads {tag}"


@pytest.mark.parametrize(
    "broken",
    ["[a page that is not there](nowhere.md)", "[a heading that is not there](keys.md#nowhere)"],
)
def test_a_broken_link_fails_the_build(tmp_path, broken):
    copy = _fresh_clone(tmp_path)
    page = copy / "docs" / "backups.md"
    page.write_text(page.read_text() + f"\n{broken}\n")
    out = _build(copy, tmp_path / "site")
    assert out.returncode != 0
    assert "WARNING" in out.stderr and "backups.md" in out.stderr and "nowhere" in out.stderr


def test_make_docs_and_make_lint_build_it_strictly():
    for target in ("docs", "lint"):
        out = subprocess.run(
            ["make", "-n", "--no-print-directory", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert re.search(r"bin/mkdocs build --strict", out.stdout), (target, out.stdout)


def test_the_api_reference_is_the_served_document(site, app):
    served = openapi.document(openapi.routed_operations(app))
    built = json.loads((site / "api" / "openapi.json").read_text())
    assert set(served["paths"]) <= set(built["paths"])
    html = (site / "api" / "reference" / "index.html").read_text()
    for path, item in served["paths"].items():
        for method, op in item.items():
            if method in openapi.METHODS:
                assert f'id="{op["operationId"]}"' in html, (method, path)
                for status in op["responses"]:
                    assert f"<td>{status}</td>" in html, (op["operationId"], status)
    for name in served["components"]["schemas"]:
        assert f'id="{name.lower()}"' in html, name


# -- the configuration reference --------------------------------------------------------------


def _settings_table(site: Path) -> dict[str, tuple[str, str]]:
    """``{variable: (default, values)}`` as the built page shows them."""
    html = (site / "configuration" / "index.html").read_text()
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        cells = [
            re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        if cells and cells[0].startswith(config.PREFIX):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_the_configuration_reference_names_every_setting(site):
    table = _settings_table(site)
    assert set(table) == {config.PREFIX + s for s in config.SETTINGS}


def test_the_configuration_reference_says_what_the_code_does(site, tmp_path):
    """Each default is what ``load`` gives with nothing set, each range the one it enforces,
    each list of choices the one it accepts."""
    table = _settings_table(site)
    base = {"LINKSVC_INSTANCE_PATH": str(tmp_path)}
    defaults = config.load(base)
    checked = 0
    for name, (default, values) in table.items():
        attr = name.removeprefix(config.PREFIX).lower()
        if hasattr(defaults, attr) and re.fullmatch(r"[0-9]+", default):
            assert str(int(getattr(defaults, attr))) == default, name
        if m := re.fullmatch(r"([0-9]+)–([0-9]+)", values):
            if name in ("LINKSVC_BIND", "LINKSVC_WORKERS", "LINKSVC_THREADS"):
                continue  # gunicorn.conf.py's
            lo, hi = int(m.group(1)), int(m.group(2))
            config.load({**base, name: str(lo)})
            config.load({**base, name: str(hi)})
            for wrong in ([str(lo - 1)] if lo > 0 else []) + [str(hi + 1)]:
                with pytest.raises(config.ConfigError) as info:
                    config.load({**base, name: wrong})
                assert info.value.name == name
            checked += 1
        elif values.startswith("`") and name != "LINKSVC_ENV":
            for choice in re.findall(r"`([^`]+)`", values):
                config.load({**base, name: choice})
            with pytest.raises(config.ConfigError) as info:
                config.load({**base, name: "surely-not-a-choice"})
            assert info.value.name == name
            checked += 1
    assert checked >= 15
    assert table["LINKSVC_MAX_TTL_DOWNLOAD"] == ("300", f"10–{config.HARD_MAX_TTL}")


def test_a_setting_without_its_line_fails_the_reference(monkeypatch):
    from scripts import mkdocs_hooks

    monkeypatch.setattr(config, "SETTINGS", (*config.SETTINGS, "SHINY_NEW"))
    with pytest.raises(ValueError, match="SHINY_NEW"):
        mkdocs_hooks.config_reference()


# -- as printed, after `make run` -------------------------------------------------------------


def test_the_blocks_that_say_they_run_are_where_they_were():
    """Taking the title off a block would quietly stop this test from running it."""
    pages = {b.name for b in runnable()}
    assert {
        "README.md",
        "docs/getting-started.md",
        "docs/downloads.md",
        "docs/python-client.md",
        "docs/cli.md",
        "docs/languages.md",
        "docs/production.md",
    } <= pages
    for block in runnable():
        assert "lsk_..." not in block.body and "<" not in block.body, (block.name, "placeholder")


def _venv_flask() -> Path:
    flask = ROOT / ".venv" / "bin" / "flask"
    assert flask.exists(), "the manual's commands run the repository's .venv (make venv-test)"
    return flask


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@dataclass
class MadeRun:
    """A checkout where `make run` is going: the repository's files, its ``instance/`` set up
    as `make run` sets it up (development, `init-db`, the demo client's key in demo.env), and
    linksvc served from it on ``port``."""

    checkout: Path
    port: int
    env: dict[str, str]  # the shell's: no LINKSVC_* settings, as in a second terminal

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        # The manual names port 8000 and /tmp/link.json; this linksvc has a free port, and
        # this run a file no other test run writes.
        script = script.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        script = script.replace("/tmp/link.json", str(self.checkout / "link.json"))
        return _run("set -e -o pipefail\n" + script, self.checkout, self.env)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeRun]:
    tmp_path = tmp_path_factory.mktemp("made_run")
    port = free_port()
    instance = tmp_path / "instance"
    shell = {k: v for k, v in os.environ.items() if not k.startswith("LINKSVC_")}
    env = shell | {
        "LINKSVC_ENV": "development",
        "LINKSVC_INSTANCE_PATH": str(instance),
        "LINKSVC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    demo = ["demo", "--app-url", "http://127.0.0.1:5001", "--env-file", str(instance / "demo.env")]
    for args in (["init-db"], demo):  # as the Makefile's `run` target does
        subprocess.run(
            [str(_venv_flask()), "--app", "app", *args],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("instance", "site", ".git", ".pytest_cache", ".hypothesis"):
            (checkout / entry.name).symlink_to(entry)
    (checkout / "instance").symlink_to(instance)
    server = start_gunicorn(env, workers=1, port=port, log_path=tmp_path / "server.log")
    try:
        yield MadeRun(checkout, port, shell)
    finally:
        server.stop()


def _expect(block: Block, out: subprocess.CompletedProcess[str], run: MadeRun) -> None:
    """What each block is shown to print, beyond succeeding."""
    flat = out.stdout.replace(" ", "")
    if block.name == "README.md":
        assert '"subject":"user-42"' in flat and '"code":"used"' in flat
    elif block.name == "docs/getting-started.md":
        assert '"code":"used"' in flat and '"state":"consumed"' in flat
    elif block.name == "docs/downloads.md":
        assert out.stdout.splitlines() == ["HTTP/1.1 200 OK", "200 welcome.txt", "409"]
        assert (run.checkout / "welcome.txt").read_text().startswith("Hello from linksvc.")
    elif block.name == "docs/python-client.md":
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"mail this: http://127.0.0.1:{run.port}/l/")
        assert lines[-2:] == ["user-42 {'next': '/inbox'}", "second try: used"]
    elif block.name == "docs/cli.md":
        commands = [c for c in re.sub(r"\\\n\s*", " ", block.body).splitlines() if c.strip()]
        assert all(c.startswith(".venv/bin/flask --app app ") for c in commands), commands
        assert "api_key:   lsk_" in out.stdout  # clients create
        assert "http://127.0.0.1:8000/l/" in out.stdout  # mint, with the default base URL
        assert re.search(r"^cl_\w+ +demo ", out.stdout, re.M)  # what make run made is there
    elif block.name == "docs/production.md":
        printed, as_json = out.stdout.splitlines()
        assert re.fullmatch(r"purged \d+ link\(s\), .* older than 7 day\(s\) past expiry", printed)
        assert json.loads(as_json)["retention_days"] == 7
    elif block.name == "docs/languages.md":
        assert "every catalog" in out.stdout


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"{b.name}:{b.title}")
def test_the_block_runs_as_printed_after_make_run(made_run, block):
    for other in blocks(block.page):
        if other.lang != "sh" and re.fullmatch(r"[\w.-]+\.\w+", other.title):
            (made_run.checkout / other.title).write_text(other.body)
    out = made_run.run(block.body)
    assert out.returncode == 0, f"{block.name}\n{block.body}\n{out.stdout}\n{out.stderr}"
    _expect(block, out, made_run)


def test_what_keys_generate_prints_runs_as_printed(made_run):
    """The command a key's creation tells the operator to run next is the manual's form."""
    out = made_run.run(".venv/bin/flask --app app keys generate")
    assert out.returncode == 0, out.stderr
    assert "`.venv/bin/flask --app app keys rotate`" in out.stdout, out.stdout
