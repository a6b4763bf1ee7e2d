"""`make test` installs what the tests need from the system when it can (Chromium and npm
with apt-get, as root) and says plainly what will skip when it cannot. apt-get and id are
stand-ins on PATH here: the test never installs anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .support import ROOT


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
