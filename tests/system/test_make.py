"""`make test` installs what the tests need from the system when it can (Chromium and npm
with apt-get, as root) and says plainly what will skip when it cannot. apt-get and id are
stand-ins on PATH here: the test never installs anything. `make run` on a port another
program holds stops with one line saying how to choose another, never "Ready"."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support.env import ROOT, free_port
from tests.system.test_dev_run import other_server


def _shims(tmp_path: Path, uid: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\n')
    for name in ("id", "apt-get"):
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _system_deps(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "system-deps", f"CHROMIUM={tmp_path / 'no-chromium'}"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )


def test_as_root_a_missing_chromium_is_installed_with_apt_get(tmp_path):
    out = _system_deps(tmp_path, _shims(tmp_path, 0))
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "update -q"
    assert calls[1].startswith("install -y -q") and "chromium" in calls[1].split()
    assert "installing chromium" in out.stdout


def test_without_root_it_says_what_will_skip(tmp_path):
    out = _system_deps(tmp_path, _shims(tmp_path, 1000))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "apt.log").exists()
    assert "SKIPPING the browser tests: no Chromium at" in out.stdout
    assert "apt-get install chromium" in out.stdout


def test_nothing_to_do_when_everything_is_there(tmp_path):
    env = _shims(tmp_path, 0)
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    out = subprocess.run(
        ["make", "--no-print-directory", "system-deps", f"CHROMIUM={fake}"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and "SKIPPING the browser" not in out.stdout
    calls = (tmp_path / "apt.log").read_text() if (tmp_path / "apt.log").exists() else ""
    assert "chromium" not in calls


# -- make run on a taken port (issue 24 item 10) --------------------------------------------


def _make_run_env(instance: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LINKSVC_")
        and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PORT", "APP_PORT")
    }
    return {**env, "LINKSVC_INSTANCE_PATH": str(instance)}


def test_make_run_on_a_taken_port_says_so_and_how_to_choose_another(tmp_path):
    """Another server on PORT answers any request: `make run` must not take it for linksvc."""
    with other_server(body=b'{"status":"ok"}') as port:
        out = subprocess.run(
            ["make", "--no-print-directory", "run", f"PORT={port}", f"APP_PORT={free_port()}"],
            cwd=ROOT,
            env=_make_run_env(tmp_path / "instance"),
            text=True,
            capture_output=True,
            timeout=600,
        )
    assert out.returncode != 0, out.stdout[-3000:]
    assert "Ready" not in out.stdout + out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("dev_run:")]
    assert len(said) == 1, out.stderr
    assert re.fullmatch(
        rf"dev_run: port {port} is already in use by another program; "
        r"stop it, or choose another port: make run PORT=\d+",
        said[0],
    ), said[0]
    # The demo client's key went to the instance make run was pointed at, not ./instance.
    assert (tmp_path / "instance" / "demo.env").is_file()


def test_make_run_waits_for_what_linksvc_healthz_answers(app):
    """The text `make run` waits for is in linksvc's own /healthz answer, so a real start
    still says Ready (tests/system/test_journey.py runs it whole)."""
    makefile = (ROOT / "Makefile").read_text()
    expect = re.search(r"--ready \S+/healthz --expect '([^']+)'", makefile)
    assert expect, "make run waits for /healthz with an --expect"
    body = app.test_client().get("/healthz").get_data(as_text=True)
    assert expect.group(1) in body
