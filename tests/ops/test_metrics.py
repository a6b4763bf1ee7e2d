"""Metrics (/metrics), request ids in the logs, and the API-key cache.

The gunicorn test is the one that matters: two workers, counters written by both, and every
scrape — whichever worker answers it — sums all of them, a killed worker's included.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from linksvc import create_app, errors
from linksvc.clients import registry as clients_mod
from linksvc.links import ledger
from linksvc.ops import logs, metrics
from linksvc.services import services
from linksvc.store import db, migrate, partitions
from tests.support.apps import ApiUser
from tests.support.env import base_env
from tests.support.servers import SERVERS, prepare_instance, start_server

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text → {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# -- in-process ----------------------------------------------------------------------------


def test_mint_redeem_replay_are_counted_under_their_labels(api: ApiUser) -> None:
    before = parse(api.http.get("/metrics").get_data(as_text=True))
    link = api.minted("magic_link")
    assert api.verify(link["token"]).status_code == 200
    assert api.redeem(link["token"]).status_code == 200
    assert api.redeem(link["token"]).status_code == 409
    assert api.redeem(link["token"], purpose="password_reset").status_code == 401
    resp = api.http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    after = parse(resp.get_data(as_text=True))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    cid = api.client.id
    assert delta("linksvc_links_minted_total", purpose="magic_link", client=cid) == 1
    assert delta("linksvc_verifications_total", purpose="magic_link", outcome="valid") == 1
    assert delta("linksvc_redemptions_total", purpose="magic_link", outcome="consumed") == 1
    assert delta("linksvc_redemptions_total", purpose="magic_link", outcome="used") == 1
    assert (
        delta("linksvc_redemptions_total", purpose="password_reset", outcome="wrong_purpose") == 1
    )
    assert delta("linksvc_request_duration_seconds_count", endpoint="api.redeem") == 3
    assert delta("linksvc_http_responses_total", endpoint="api.redeem", status="409") == 1
    # No token, key or subject ever appears in the metrics.
    text = resp.get_data(as_text=True)
    assert link["token"] not in text and api.api_key not in text and "user-42" not in text


def test_every_reason_code_has_a_series_from_the_start(api: ApiUser) -> None:
    samples = parse(api.http.get("/metrics").get_data(as_text=True))
    reasons = metrics.reason_codes()
    assert {
        "malformed",
        "bad_signature",
        "unknown_key",
        "wrong_purpose",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "used",
        "revoked",
        "superseded",
        "unknown_link",
    } <= set(reasons)
    for purpose in ("magic_link", "password_reset", "download"):
        for outcome in ("consumed", *reasons):
            assert (
                "linksvc_redemptions_total",
                frozenset({("purpose", purpose), ("outcome", outcome)}),
            ) in samples, (purpose, outcome)


def test_rejections_before_the_signature_are_counted_too(api: ApiUser) -> None:
    before = parse(api.http.get("/metrics").get_data(as_text=True))
    assert api.redeem("not.a.token").status_code == 401
    link = api.minted("magic_link")
    head, body, sig = link["token"].split(".")
    forged = f"{head}.{body}.{'A' * len(sig)}"
    assert api.redeem(forged).status_code == 401
    after = parse(api.http.get("/metrics").get_data(as_text=True))
    for reason in ("malformed", "bad_signature"):
        assert (
            value(after, "linksvc_redemptions_total", purpose="magic_link", outcome=reason)
            - value(before, "linksvc_redemptions_total", purpose="magic_link", outcome=reason)
        ) == 1


def test_key_ages_follow_the_clock(app, api: ApiUser) -> None:
    svc = services(app).links
    active = next(k for k in svc.keyring.published() if k.state == "active")
    svc.clock = lambda: active.created_at + 3600
    samples = parse(api.http.get("/metrics").get_data(as_text=True))
    assert (
        value(
            samples,
            "linksvc_signing_key_age_seconds",
            kid=active.kid,
            alg=active.alg,
            state="active",
        )
        == 3600
    )
    kids = {
        dict(labels)["kid"] for name, labels in samples if name == "linksvc_signing_key_age_seconds"
    }
    assert kids == {k.kid for k in svc.keyring.published()}


def test_log_records_carry_the_request_id(api: ApiUser) -> None:
    handler = next(
        h for h in logging.getLogger("linksvc").handlers if getattr(h, "_linksvc", False)
    )
    assert any(isinstance(f, logs.RequestIdFilter) for f in handler.filters)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    keep.addFilter(logs.RequestIdFilter())
    logging.getLogger("linksvc").addHandler(keep)
    try:
        resp = api.http.post(
            "/api/v1/links",
            json={"purpose": "magic_link", "subject": "u-1"},
            headers={**api.headers, "X-Request-Id": "req-abc-123"},
        )
    finally:
        logging.getLogger("linksvc").removeHandler(keep)
    assert resp.headers["X-Request-Id"] == "req-abc-123"
    minted = [r for r in seen if r.getMessage() == "link minted"]
    assert minted and minted[0].request_id == "req-abc-123"
    line = logs.JsonFormatter().format(minted[0])
    assert '"request_id": "req-abc-123"' in line and resp.get_json()["token"] not in line


def test_disabling_a_client_takes_effect_within_the_cache_bound(app, api: ApiUser) -> None:
    svc = services(app).links
    t = [1000.0]
    svc.client_cache.clock = lambda: t[0]
    assert api.mint().status_code == 201  # cached now
    with db.write(svc.engine) as conn:
        clients_mod.update(conn, api.client.id, disabled=True)
    t[0] += svc.client_cache.seconds - 0.5
    assert api.mint().status_code == 201  # inside the documented bound
    t[0] += 0.5
    resp = api.mint()
    assert resp.status_code == 401 and resp.get_json()["code"] == "unauthorized"


def test_made_up_keys_are_never_cached(app, api: ApiUser) -> None:
    svc = services(app).links
    for i in range(5):
        resp = api.http.post(
            "/api/v1/links",
            json={"purpose": "magic_link", "subject": "u"},
            headers={"Authorization": f"Bearer lsk_madeup{i:020d}"},
        )
        assert resp.status_code == 401
    assert len(svc.client_cache._entries) <= 1
    cache = clients_mod.ClientCache(seconds=5, max_entries=3)
    for i in range(10):
        cache.put(str(i), api.client)
    assert len(cache._entries) <= 3


def test_unavailable_key_store_drops_the_gauge_not_the_scrape(
    app, api: ApiUser, monkeypatch
) -> None:
    svc = services(app).links

    def down() -> list:
        raise errors.ServiceUnavailable("database")

    monkeypatch.setattr(svc.keyring, "published", down)
    resp = api.http.get("/metrics")
    assert resp.status_code == 200
    assert "linksvc_signing_key_age_seconds{" not in resp.get_data(as_text=True)


def test_mails_are_counted_sent_and_failed(app, api: ApiUser, monkeypatch) -> None:
    def scrape() -> dict:
        return parse(api.http.get("/metrics").get_data(as_text=True))

    before = scrape()
    assert api.mint("magic_link", "user-1", email="someone@example.com").status_code == 201
    mailer = services(app).mailer

    class Refusing:
        def send(self, _message: object) -> None:
            raise OSError("connection refused")

    monkeypatch.setattr(mailer, "transport", Refusing())
    assert api.mint("magic_link", "user-1", email="someone@example.com").status_code == 502
    after = scrape()
    for outcome in ("sent", "failed"):
        assert value(after, "linksvc_mail_total", outcome=outcome) == (
            value(before, "linksvc_mail_total", outcome=outcome) + 1
        )


def test_pool_connections_in_use_go_up_and_back(app) -> None:
    engine = services(app).links.engine
    before = metrics.POOL_IN_USE._value.get()
    with engine.connect():
        assert metrics.POOL_IN_USE._value.get() == before + 1
    assert metrics.POOL_IN_USE._value.get() == before


def test_database_ready_and_purge_overdue_follow_the_ledger(app, api: ApiUser) -> None:
    svc = services(app).links
    retention = app.config["LINKSVC"].retention_days * 86400
    api.minted("magic_link", ttl=60)
    with db.read(svc.engine) as conn:
        exp = conn.execute(sa.select(sa.func.max(db.links.c.exp))).scalar_one()
    samples = parse(api.http.get("/metrics").get_data(as_text=True))
    assert value(samples, "linksvc_database_ready") == 1
    assert value(samples, "linksvc_ledger_purge_overdue_seconds") == 0
    assert value(samples, "linksvc_db_pool_size") == app.config["LINKSVC"].db_pool_size
    # SQLite has no partitions: the gauge is absent rather than a misleading 0.
    assert not any(n == "linksvc_ledger_partitions_ahead_days" for n, _ in samples)

    svc.clock = lambda: exp + retention + 3600  # purge has not run for an hour past due
    samples = parse(api.http.get("/metrics").get_data(as_text=True))
    assert value(samples, "linksvc_ledger_purge_overdue_seconds") == 3600
    ledger.purge(svc.engine, now=exp + retention + 3600, retention_seconds=retention)
    samples = parse(api.http.get("/metrics").get_data(as_text=True))
    assert value(samples, "linksvc_ledger_purge_overdue_seconds") == 0


def test_database_down_reports_not_ready_and_keeps_the_scrape(
    app, api: ApiUser, monkeypatch
) -> None:
    svc = services(app).links
    monkeypatch.setattr(svc, "ready", lambda: False)
    resp = api.http.get("/metrics")
    assert resp.status_code == 200
    samples = parse(resp.get_data(as_text=True))
    assert samples[("linksvc_database_ready", frozenset())] == 0
    assert "linksvc_ledger_purge_overdue_seconds" not in resp.get_data(as_text=True)


def test_partitions_ahead_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    migrate.upgrade(engine)
    engine.dispose()
    app = create_app(base_env(tmp_path / "instance", pg_url))
    try:
        svc = services(app).links
        client = app.test_client()
        today = partitions.day_of(int(time.time()))
        partitions.ensure_ahead(svc.engine, now=today)

        def ahead() -> dict[str, float]:
            samples = parse(client.get("/metrics").get_data(as_text=True))
            return {
                t: value(samples, "linksvc_ledger_partitions_ahead_days", table=t)
                for t in partitions.KEYS
            }

        assert ahead() == dict.fromkeys(partitions.KEYS, partitions.AHEAD_DAYS)
        with svc.engine.begin() as conn:  # the third day ahead went missing
            name = partitions.day_name("links", today + 3 * partitions.DAY)
            conn.exec_driver_sql(f'ALTER TABLE links DETACH PARTITION "{name}"')
            conn.exec_driver_sql(f'DROP TABLE "{name}"')
        assert ahead() == {"links": 2, "link_events": partitions.AHEAD_DAYS}
    finally:
        services(app).links.engine.dispose()


# -- two gunicorn workers ------------------------------------------------------------------


def _worker_pids(prom_dir: Path) -> set[int]:
    return {
        int(m.group(1))
        for p in prom_dir.iterdir()
        if (m := re.match(r"counter_(\d+)\.db$", p.name))
    }


@pytest.mark.slow
@pytest.mark.parametrize("server_name", SERVERS)
def test_counts_add_up_across_two_workers(tmp_path: Path, server_name: str) -> None:
    instance = tmp_path / "instance"
    env = base_env(instance)
    created = prepare_instance(env)
    key, cid = created["api_key"], created["client_id"]
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    (prom_dir / "counter_999999.db").write_bytes(b"stale counts from an earlier run")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    server = start_server(env, server=server_name, workers=2, log_path=tmp_path / "server.log")
    try:
        assert not (prom_dir / "counter_999999.db").exists()  # emptied at start
        h = {"Authorization": f"Bearer {key}"}
        n = 24
        tokens = []
        for i in range(n):  # a fresh connection each time: both workers serve some
            r = requests.post(
                server.url + "/api/v1/links",
                json={"purpose": "magic_link", "subject": f"u-{i}"},
                headers=h,
                timeout=10,
            )
            assert r.status_code == 201, r.text
            tokens.append(r.json()["token"])
        for t in tokens:
            r = requests.post(
                server.url + "/api/v1/links/redeem",
                json={"purpose": "magic_link", "token": t},
                headers=h,
                timeout=10,
            )
            assert r.status_code == 200, r.text
        for t in tokens[: n // 2]:
            r = requests.post(
                server.url + "/api/v1/links/redeem",
                json={"purpose": "magic_link", "token": t},
                headers=h,
                timeout=10,
            )
            assert r.status_code == 409 and r.json()["code"] == "used"
        pids = _worker_pids(prom_dir)
        assert len(pids) == 2, f"both workers should have served requests: {pids}"

        def check() -> None:
            # Each scrape may land on either worker; every one sees the sum.
            for _ in range(6):
                s = parse(requests.get(server.url + "/metrics", timeout=10).text)
                assert value(s, "linksvc_links_minted_total", purpose="magic_link", client=cid) == n
                assert (
                    value(s, "linksvc_redemptions_total", purpose="magic_link", outcome="consumed")
                    == n
                )
                assert (
                    value(s, "linksvc_redemptions_total", purpose="magic_link", outcome="used")
                    == n // 2
                )
                assert (
                    value(s, "linksvc_redemptions_total", purpose="magic_link", outcome="expired")
                    == 0
                )
                assert (
                    value(s, "linksvc_request_duration_seconds_count", endpoint="api.redeem")
                    == n + n // 2
                )
                assert (
                    value(s, "linksvc_http_responses_total", endpoint="api.mint", status="201") == n
                )

        check()
        # A worker that dies is replaced; what it counted still counts.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if (
                    requests.get(server.url + "/healthz", timeout=2).status_code == 200
                    and len(_worker_pids(prom_dir) - {victim}) >= 2
                ):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        check()
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    for t in tokens:
        assert t not in server.log()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("server_name", SERVERS)
def test_server_without_a_named_directory_makes_and_removes_its_own(
    tmp_path: Path, server_name: str
) -> None:
    env = base_env(tmp_path / "instance")
    created = prepare_instance(env)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # What a master killed with SIGKILL leaves behind (pid 4194305 is above Linux's pid_max).
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    orphan = shm / "linksvc-metrics-4194305-orphan"
    orphan.mkdir(exist_ok=True)
    (orphan / "counter_1.db").write_bytes(b"")
    server = start_server(env, server=server_name, workers=2, log_path=tmp_path / "server.log")
    assert not orphan.exists()
    try:
        h = {"Authorization": f"Bearer {created['api_key']}"}
        for i in range(6):
            assert (
                requests.post(
                    server.url + "/api/v1/links",
                    json={"purpose": "magic_link", "subject": f"u{i}"},
                    headers=h,
                    timeout=10,
                ).status_code
                == 201
            )
        for _ in range(4):
            s = parse(requests.get(server.url + "/metrics", timeout=10).text)
            assert (
                value(
                    s,
                    "linksvc_links_minted_total",
                    purpose="magic_link",
                    client=created["client_id"],
                )
                == 6
            )
        # The workers' counter files, found through their memory maps.
        dirs = set()
        for pid in _children(server.proc.pid):
            maps = Path(f"/proc/{pid}/maps").read_text()
            dirs |= {
                Path(m).parent
                for m in re.findall(r"(/\S*linksvc-metrics-[^/\s]+/counter_\d+\.db)", maps)
            }
        assert len(dirs) == 1, dirs
    finally:
        server.stop()
    assert not next(iter(dirs)).exists()  # removed when the master exits


def test_metrics_token_is_off_by_default_and_required_when_set(env) -> None:
    from linksvc import create_app
    from linksvc.config import ConfigError

    open_app = create_app(env)
    try:
        assert open_app.test_client().get("/metrics").status_code == 200
    finally:
        services(open_app).links.engine.dispose()

    token = "scrape-" + "x" * 24
    app = create_app({**env, "LINKSVC_METRICS_TOKEN": token})
    try:
        http = app.test_client()
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-of-some-length"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": f"Bearer {token}x"},
            {"Authorization": f"Bearer {token[:-1]}"},
        ):
            refused = http.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert "linksvc_" not in refused.get_data(as_text=True)
        ok = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "linksvc_redemptions_total" in ok.get_data(as_text=True)
    finally:
        services(app).links.engine.dispose()
    with pytest.raises(ConfigError) as info:
        create_app({**env, "LINKSVC_METRICS_TOKEN": "short"})
    assert info.value.name == "LINKSVC_METRICS_TOKEN"
