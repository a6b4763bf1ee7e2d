"""The first hour, for real: `make run` in a fresh clone of the repository (its own virtual
environment, database, keys and demo client), then the journey a new user takes in Chromium —
the example application's home page, "email me a sign-in link", linksvc's waiting page (a
sign-in that completes on the device that asked), the development outbox, the mail's link,
the button, signed in — with a screenshot of each step; PORT and APP_PORT are
honoured in everything `make run` prints and mints; Ctrl-C stops everything it started.

Screenshots go to ``<pytest basetemp>/screenshots/journey_*.png`` (or
``$LINKSVC_TEST_ARTEFACTS``); with ``LINKSVC_UPDATE_SCREENSHOTS=1`` the ones the manual
shows are also written to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import ROOT, _clean_environ, free_port, missing

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: A fresh clone installs its own virtual environment: give it time on a busy machine.
READY_TIMEOUT = 900
USER = "ada-42"

pytestmark = pytest.mark.slow


def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LINKSVC_TEST_ARTEFACTS")
    path = Path(where) if where else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(shot: Path) -> None:
    """Copy a screenshot the manual shows into docs/screenshots/ (on request only)."""
    if os.environ.get("LINKSVC_UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)


class MakeRun:
    """`make run` in its own process group, its output collected line by line."""

    def __init__(self, clone: Path, port: int, app_port: int) -> None:
        env = {
            k: v
            for k, v in _clean_environ().items()
            if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PORT", "APP_PORT")
        }
        self.proc = subprocess.Popen(
            ["make", "run", f"PORT={port}", f"APP_PORT={app_port}"],
            cwd=clone,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Ready. Open"):
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def ctrl_c(self, timeout: float = 60) -> int:
        """What a terminal's Ctrl-C does: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    if shutil.which("git") is None or shutil.which("make") is None:
        missing("git and make", "apt-get install git make")
    clone = tmp_path_factory.mktemp("fresh") / "linksvc"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    port, app_port = free_port(), free_port()
    while app_port == port:
        app_port = free_port()
    run = MakeRun(clone, port, app_port)
    try:
        if not run.ready.wait(READY_TIMEOUT):
            pytest.fail(f"make run never said Ready:\n{run.output[-6000:]}", pytrace=False)
        yield {"run": run, "port": port, "app_port": app_port, "clone": clone}
    finally:
        run.kill()


def test_make_run_honours_the_ports_in_what_it_prints(journey):
    out = journey["run"].output
    port, app_port = journey["port"], journey["app_port"]
    assert f"curl -s -X POST http://127.0.0.1:{port}/api/v1/links" in out
    assert f"redirect URI http://127.0.0.1:{app_port}/callback" in out
    assert f"Open http://127.0.0.1:{app_port}, sign in" in out
    assert f"http://127.0.0.1:{port}/dev/outbox" in out
    if port != 8000:
        assert ":8000" not in out
    if app_port != 5001:
        assert ":5001" not in out
    assert re.search(r"API key \(the same on every `make run`; development only\): lsk_", out)


def test_journey_from_the_example_app_through_the_outbox_to_signed_in(journey, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    shots = artefacts(tmp_path_factory)
    port, app_port = journey["port"], journey["app_port"]
    app, linksvc = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{port}"

    def shot(page: Any, name: str) -> None:
        path = shots / f"journey_{name}.png"
        page.screenshot(path=str(path), full_page=True)
        publish(path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
            page.set_default_timeout(20000)
            page.goto(app + "/")
            shot(page, "1_home")
            page.get_by_label("User id").fill(USER)
            page.click("#send-sign-in")
            # The app started a sign-in and sent this browser to linksvc's waiting page,
            # which binds it: only this browser can complete the sign-in.
            page.wait_for_url(re.compile(re.escape(linksvc) + r"/s/[A-Za-z0-9_-]{22}$"))
            assert page.locator("h1").inner_text() == "Check your mail"
            assert re.fullmatch(r"[1-9][0-9]", page.locator("#match-number").inner_text())
            shot(page, "2_waiting")
            page.click("#outbox-link")
            page.wait_for_url(linksvc + "/dev/outbox")
            assert "Your sign-in link for Example App" in page.locator("main").inner_text()
            shot(page, "3_outbox")
            link = page.locator("a.mail-link").first
            assert link.get_attribute("href").startswith(f"{linksvc}/l/")  # PORT in minted URLs
            link.click()
            assert page.locator("h1").inner_text() == "Sign in to Example App"
            shot(page, "4_confirm")
            page.get_by_role("button", name="Sign in to Example App").click()
            page.wait_for_url(app + "/")
            assert page.locator("#subject").inner_text() == USER
            shot(page, "5_signed_in")
        finally:
            browser.close()


def test_ctrl_c_stops_everything_make_run_started(journey):
    run: MakeRun = journey["run"]
    pids = [int(p) for p in re.findall(r"\| started \(pid (\d+)\)", run.output)]
    assert len(pids) >= 2, run.output[-3000:]
    code = run.ctrl_c()
    # make passes the interrupt on: it dies of SIGINT itself (-2), or exits 2 or 130.
    assert code in (0, 2, 130, -signal.SIGINT), run.output[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        any(_alive(p) for p in pids)
        or not (_refuses(journey["port"]) and _refuses(journey["app_port"]))
    ):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), run.output[-3000:]
    assert _refuses(journey["port"]) and _refuses(journey["app_port"])
    assert "Traceback" not in run.output
