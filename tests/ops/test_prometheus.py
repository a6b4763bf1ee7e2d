"""The operator's Prometheus rules and Grafana dashboard (deploy/), checked for real.

- ``promtool check rules`` accepts both rules files, and ``promtool test rules`` passes the
  alerts' unit tests — among which, for every alert, one where it fires and one where it
  stays quiet;
- every alert's ``runbook_url`` names a section of docs/operations.md;
- a real Prometheus (Debian's package, on a loopback port, in a temporary directory) scrapes
  linksvc under gunicorn with two workers on PostgreSQL while it serves a little traffic,
  loads the rules as they ship, and every expression of the rules and of the dashboard is
  valid and returns data through its HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.support.env import base_env, free_port, missing
from tests.support.servers import prepare_instance, start_gunicorn

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = [DEPLOY / "prometheus" / "linksvc-rules.yml", DEPLOY / "prometheus" / "linksvc-alerts.yml"]
UNIT_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "linksvc.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        missing(name, "install Debian's prometheus package: apt-get install prometheus")
    assert path is not None
    return path


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for path in RULES for r in _rules(path) if "alert" in r]


# -- promtool -------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(
        [_tool("promtool"), "check", "rules", *map(str, RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = subprocess.run(
        [_tool("promtool"), "test", "rules", *map(str, UNIT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_is_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fires == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen staying quiet"


def _anchor(heading: str) -> str:
    # GitHub's rule: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = {
        _anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for alert in _alerts():
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", url
        assert anchor == alert["alert"].lower() and anchor in anchors, url
        assert alert["labels"]["severity"] in ("page", "ticket"), alert["alert"]


# -- a real Prometheus -----------------------------------------------------------------------

#: Dashboard variables, as Grafana would fill them in for a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def _with_bool(expr: str) -> str:
    """The alert's expression with every comparison made a 0/1 answer instead of a filter:
    it then returns data whether or not the alert would fire."""
    return re.sub(r"(?<![=!<>])(>|<|==)(?!=)\s*(?!bool)", r"\1 bool ", expr)


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"dashboard: {panel['title']} {target['refId']}", expr))
    return out


#: Expressions that legitimately have no series while nothing fails: a 429 by endpoint
#: exists only once something was rate limited.
MAY_BE_EMPTY = {"dashboard: Rate limited (429) B"}


def _query(prom: str, expr: str) -> dict[str, Any]:
    resp = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def _traffic(url: str, headers: dict[str, str]) -> None:
    # A link sent by mail (its token is not returned); past the address's mail limit, a 429.
    requests.post(
        f"{url}/api/v1/links",
        json={"purpose": "magic_link", "subject": "user-mail", "email": "u@example.com"},
        headers=headers,
        timeout=10,
    )
    for i in range(6):
        minted = requests.post(
            f"{url}/api/v1/links",
            json={"purpose": "magic_link", "subject": f"user-{i}"},
            headers=headers,
            timeout=10,
        ).json()
        token = minted["token"]
        for path in ("verify", "redeem", "redeem"):  # the second redemption is a replay
            requests.post(
                f"{url}/api/v1/links/{path}",
                json={"token": token, "purpose": "magic_link"},
                headers=headers,
                timeout=10,
            )
        page = url + urlsplit(minted["url"]).path  # the base URL is the configured one
        requests.get(page, timeout=10, allow_redirects=False)
    requests.get(f"{url}/l/not-a-token", timeout=10)


@pytest.fixture
def prometheus_binary() -> str:
    return _tool("prometheus")


def test_a_real_prometheus_evaluates_every_rule_and_panel(
    tmp_path: Path, pg_url: str, prometheus_binary: str
) -> None:
    env = base_env(tmp_path / "instance", pg_url)
    made = prepare_instance(env)
    server = start_gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log")
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    # The rules as they ship, evaluated every second instead of every 30 s.
    rule_paths = []
    for path in RULES:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("interval: 30s", "interval: 1s"))
        rule_paths.append(str(copy))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rule_paths,
                "scrape_configs": [
                    {
                        "job_name": "linksvc",
                        "static_configs": [{"targets": [server.url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    log = open(tmp_path / "prometheus.log", "wb")
    prom_proc = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    prom = f"http://127.0.0.1:{port}"
    try:
        exprs = [
            (r.get("record") or r["alert"], r["expr"] if "record" in r else _with_bool(r["expr"]))
            for path in RULES
            for r in _rules(path)
        ]
        exprs += [(f"alert as written: {a['alert']}", a["expr"]) for a in _alerts()]
        exprs += _dashboard_exprs()
        # Traffic, then more of it once Prometheus has scraped: rate() needs two samples.
        _traffic(server.url, headers)
        empty: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _traffic(server.url, headers)
            empty = {}
            for name, expr in exprs:
                try:
                    data = _query(prom, expr)
                except requests.ConnectionError:
                    empty[name] = "prometheus not up yet"
                    continue
                if not data["result"] and not name.startswith("alert as written"):
                    empty[name] = expr
            if set(empty) <= MAY_BE_EMPTY:
                break
            print("still empty:", sorted(empty), flush=True)
            time.sleep(1)
        assert set(empty) <= MAY_BE_EMPTY, empty
        # Rule loading: Prometheus reports every group healthy, no evaluation error.
        groups = requests.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert loaded == {r.get("record") or r["alert"] for p in RULES for r in _rules(p)}
        bad = [
            (r["name"], r.get("lastError"))
            for g in groups
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert bad == []
        # Both workers' counts are in the one scrape: the mints add up.
        minted = _query(prom, "sum(linksvc_links_minted_total)")["result"]
        assert float(minted[0]["value"][1]) >= 12
    finally:
        prom_proc.terminate()
        prom_proc.wait(timeout=30)
        log.close()
        server.stop()
