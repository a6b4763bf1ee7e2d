"""Webhook endpoints and the events of a link's life, in-process: the `webhooks` CLI, the
secret shown once and stored encrypted, each event written with its ledger change (and only
for clients with endpoints), bodies without tokens, replay detection and its policy."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from linksvc import create_app
from linksvc.services import services
from linksvc.store import db
from linksvc.webhooks import endpoints as webhooks
from linksvc.webhooks import outbox, ssrf
from tests.support.apps import _prepare, make_api_user
from tests.support.databases import dump_database
from tests.web.test_pages import code_of, open_page, path_of, press

DEV = ssrf.Policy(allow_loopback=True)


def add_endpoint(app: Flask, client_id: str, url: str = "http://127.0.0.1:9/hook", **kw: Any):
    svc = services(app).links
    with db.write(svc.engine) as conn:
        endpoint, secret = webhooks.add(
            conn,
            app.config["LINKSVC"].key_encryption_key,
            client_id,
            url,
            events=kw.pop("events", None),
            rules=DEV,
            now=int(time.time()),
        )
    svc.sinks.clear()
    return endpoint, secret


def rows(app: Flask, client_id: str | None = None) -> list[dict[str, Any]]:
    o = db.webhook_outbox
    q = sa.select(o).order_by(o.c.id)
    if client_id:
        q = q.where(o.c.client_id == client_id)
    with db.read(services(app).links.engine) as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


@pytest.fixture(params=["jwt", "short"])
def link_format(request: pytest.FixtureRequest) -> str:
    """The events of ``api``'s links are the same for both forms of a link (PRODUCT §8)."""
    return str(request.param)


def types(app: Flask, jti: str | None = None) -> list[str]:
    return [r["event_type"] for r in rows(app) if jti is None or r["jti"] == jti]


# -- the CLI -------------------------------------------------------------------------


def test_add_shows_the_secret_once_and_stores_it_encrypted(app, api, runner, env):
    out = runner.invoke(
        args=["webhooks", "add", api.client.id, "http://127.0.0.1:9/hook", "--json"]
    )
    assert out.exit_code == 0, out.output
    made = json.loads(out.output)
    secret = made["secret"]
    assert secret.startswith("whsec_")
    listed = runner.invoke(args=["webhooks", "list", api.client.id, "--json"])
    assert secret not in listed.output
    [ep] = json.loads(listed.output)
    assert ep["endpoint_id"] == made["endpoint_id"] and ep["url"] == "http://127.0.0.1:9/hook"
    dump = dump_database(env["LINKSVC_DATABASE_URL"])
    assert secret not in dump and secret.removeprefix("whsec_") not in dump


def test_rotate_disable_enable_remove(app, api, runner):
    ep, old = add_endpoint(app, api.client.id)
    out = runner.invoke(args=["webhooks", "rotate-secret", ep.id, "--json"])
    assert out.exit_code == 0, out.output
    new = json.loads(out.output)["secret"]
    assert new != old
    svc = services(app).links
    with db.read(svc.engine) as conn:
        row = conn.execute(
            sa.select(db.webhook_endpoints).where(db.webhook_endpoints.c.id == ep.id)
        ).one()
    now = int(time.time())
    kek = app.config["LINKSVC"].key_encryption_key
    live = webhooks.signing_secrets(
        kek, ep.id, row.secret_enc, row.old_secret_enc, row.old_secret_until, now
    )
    assert live == [new, old]
    # After the grace period only the new secret signs.
    later = webhooks.signing_secrets(
        kek, ep.id, row.secret_enc, row.old_secret_enc, row.old_secret_until, now + 86401
    )
    assert later == [new]

    assert runner.invoke(args=["webhooks", "disable", ep.id]).exit_code == 0
    api.minted()
    assert rows(app) == []  # a disabled endpoint gets no events
    assert runner.invoke(args=["webhooks", "enable", ep.id]).exit_code == 0
    svc.sinks.clear()
    api.minted()
    assert types(app) == ["link.minted"]
    out = runner.invoke(args=["webhooks", "remove", ep.id])
    assert out.exit_code == 0 and "1 deliveries" in out.output
    assert rows(app) == []
    assert runner.invoke(args=["webhooks", "list", "--json"]).output.strip() == "[]"


def test_secret_is_bound_to_its_endpoint(app, api):
    """An encrypted secret copied onto another endpoint's row does not decrypt."""
    a, _ = add_endpoint(app, api.client.id)
    b, _ = add_endpoint(app, api.client.id)
    kek = app.config["LINKSVC"].key_encryption_key
    with db.read(services(app).links.engine) as conn:
        blob = conn.execute(
            sa.select(db.webhook_endpoints.c.secret_enc).where(db.webhook_endpoints.c.id == a.id)
        ).scalar_one()
    with pytest.raises(webhooks.WebhookError):
        webhooks.decrypt(kek, b.id, blob)
    with pytest.raises(webhooks.WebhookError):
        webhooks.decrypt(b"x" * 32, a.id, blob)


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://10.0.0.1/h", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://[::1]/h", None),
        ("http://example.com/h", "https"),
        ("not a url", "ASCII"),
    ],
)
def test_add_refuses_urls_in_production(env, url, why):
    prod = create_app(
        {**env, "LINKSVC_ENV": "production", "LINKSVC_BASE_URL": "https://links.example"}
    )
    try:
        _prepare(prod)
        user = make_api_user(prod)
        out = prod.test_cli_runner().invoke(args=["webhooks", "add", user.client.id, url])
        assert out.exit_code != 0
        assert "URL refused" in out.output
        if why:
            assert why in out.output
    finally:
        services(prod).links.engine.dispose()


def test_add_refuses_unknown_events_and_clients(app, api, runner):
    out = runner.invoke(
        args=["webhooks", "add", api.client.id, "http://127.0.0.1:9/", "--events", "link.nope"]
    )
    assert out.exit_code != 0 and "unknown event type" in out.output
    out = runner.invoke(args=["webhooks", "add", "cl_nobody", "http://127.0.0.1:9/"])
    assert out.exit_code != 0 and "no client" in out.output


# -- events ---------------------------------------------------------------------------


def test_no_endpoint_no_outbox_row(app, api):
    link = api.minted()
    assert api.redeem(link["token"]).status_code == 200
    assert rows(app) == []
    assert services(app).links.sinks.get(services(app).links.engine, api.client.id) is None


def test_events_only_for_the_client_with_endpoints(app, api, other_api):
    add_endpoint(app, api.client.id)
    api.minted()
    other_api.minted()
    assert [r["client_id"] for r in rows(app)] == [api.client.id]


def test_event_filter(app, api):
    add_endpoint(app, api.client.id, events=["link.consumed"])
    link = api.minted()
    api.redeem(link["token"])
    assert types(app) == ["link.consumed"]


def test_one_row_per_endpoint_same_webhook_id(app, api):
    add_endpoint(app, api.client.id)
    add_endpoint(app, api.client.id)
    api.minted()
    r = rows(app)
    assert len(r) == 2 and r[0]["msg_id"] == r[1]["msg_id"]
    assert r[0]["endpoint_id"] != r[1]["endpoint_id"]


def test_life_of_a_sign_in_link(app, api, client):
    """minted, viewed, consumed (the press), code.exchanged, then a replay — in order, each
    once, each body with the link's ids and never the token."""
    add_endpoint(app, api.client.id)
    link = api.minted()
    jti = link["jti"]
    _, csrf = open_page(client, link["url"])
    resp = press(client, link["url"], csrf)
    assert resp.status_code == 303
    code = code_of(resp.headers["Location"])
    assert (
        api.http.post(
            "/api/v1/codes/exchange", json={"code": code}, headers=api.headers
        ).status_code
        == 200
    )
    assert api.redeem(link["token"]).status_code == 409  # presented again: a replay
    assert types(app, jti) == [
        "link.minted",
        "link.viewed",
        "link.consumed",
        "code.exchanged",
        "link.replayed",
    ]
    for r in rows(app):
        b = json.loads(r["payload"])
        assert b["data"]["jti"] == jti and b["data"]["subject"] == "user-42"
        assert b["data"]["client_id"] == api.client.id and b["data"]["purpose"] == "magic_link"
        assert b["type"] == r["event_type"] and b["timestamp"].endswith("Z")
        assert link["token"] not in r["payload"] and code not in r["payload"]
        assert link["url"].rsplit("/", 1)[-1] not in r["payload"]  # nor a short link's handle
        assert api.api_key not in r["payload"]
    viewed = json.loads(rows(app)[1]["payload"])["data"]
    assert viewed["suspected_scanner"] is False and viewed["signals"] == []


def test_double_press_is_not_a_replay(app, api, client):
    add_endpoint(app, api.client.id)
    link = api.minted()
    _, csrf = open_page(client, link["url"])
    assert press(client, link["url"], csrf).status_code == 303
    assert press(client, link["url"], csrf).status_code == 303
    assert "link.replayed" not in types(app)


@pytest.mark.parametrize(
    "how, signal",
    [
        ({"method": "HEAD"}, "head"),
        (
            {"headers": {"User-Agent": "Mozilla/5.0 (compatible; Slackbot-LinkExpanding 1.0)"}},
            "known_agent",
        ),
        ({"headers": {"User-Agent": "Mozilla/5.0", "Sec-Purpose": "prefetch"}}, "prefetch"),
        ({"headers": {"User-Agent": "Mozilla/5.0", "Purpose": "prefetch"}}, "prefetch"),
        ({"headers": {"User-Agent": ""}}, "no_user_agent"),
    ],
)
def test_viewed_by_a_scanner(app, api, how, signal):
    add_endpoint(app, api.client.id)
    link = api.minted()
    browser = app.test_client()
    method = how.get("method", "GET")
    headers = how.get("headers", {"User-Agent": "Mozilla/5.0"})
    resp = browser.open(path_of(link), method=method, headers=headers)
    assert resp.status_code == 200
    [viewed] = [json.loads(r["payload"]) for r in rows(app) if r["event_type"] == "link.viewed"]
    assert viewed["data"]["suspected_scanner"] is True
    assert signal in viewed["data"]["signals"]


def test_second_fetch_without_cookie_is_suspect(app, api):
    add_endpoint(app, api.client.id)
    link = api.minted()
    ua = {"User-Agent": "Mozilla/5.0"}
    person = app.test_client()
    assert person.get(path_of(link), headers=ua).status_code == 200
    assert person.get(path_of(link), headers=ua).status_code == 200  # has the cookie
    scanner = app.test_client()
    assert scanner.get(path_of(link), headers=ua).status_code == 200
    facts = [
        json.loads(r["payload"])["data"] for r in rows(app) if r["event_type"] == "link.viewed"
    ]
    assert [f["suspected_scanner"] for f in facts] == [False, False, True]
    assert facts[2]["signals"] == ["no_cookie_on_refetch"]


def test_revoked_and_superseded(app, api):
    add_endpoint(app, api.client.id)
    first = api.minted("password_reset")
    second = api.minted("password_reset")  # supersedes the first
    assert types(app, first["jti"]) == ["link.minted", "link.superseded"]
    sup = json.loads(rows(app)[1]["payload"])["data"]
    assert sup["by"] == second["jti"]
    resp = api.http.delete(f"/api/v1/links/{second['jti']}", headers=api.headers)
    assert resp.status_code == 200, resp.get_json()
    assert types(app, second["jti"]) == ["link.minted", "link.revoked"]
    third = api.minted("magic_link", subject="user-9")
    api.http.post("/api/v1/subjects/user-9/revoke", json={}, headers=api.headers)
    assert types(app, third["jti"]) == ["link.minted", "link.revoked"]


def test_sent_after_the_mail_went_out(app, api):
    add_endpoint(app, api.client.id)
    link = api.minted(email="alice@example.com")
    assert types(app, link["jti"]) == ["link.minted", "link.sent"]
    assert "alice@example.com" not in json.dumps(rows(app), default=str)


def test_event_rolls_back_with_its_change(app, api):
    """No event without its change: a mint whose transaction fails leaves no outbox row."""
    add_endpoint(app, api.client.id)
    svc = services(app).links
    sink = svc.sinks.get(svc.engine, api.client.id)
    with pytest.raises(RuntimeError):
        with db.write(svc.engine) as conn:
            sink.emit(conn, "link.minted", jti="j", purpose="magic_link", subject="s", now=1)
            raise RuntimeError("the ledger change failed")
    assert rows(app) == []


def test_facts_may_not_carry_secrets():
    with pytest.raises(ValueError):
        outbox.Event("link.sent", "c", "j", "p", "s", at=0, facts={"email": "a@b.c"}).body()


# -- replay detection -------------------------------------------------------------------


def test_on_replay_revoke_subject(app, api, runner):
    out = runner.invoke(args=["webhooks", "on-replay", api.client.id, "revoke-subject"])
    assert out.exit_code == 0, out.output
    services(app).links.sinks.clear()
    used = api.minted(subject="user-7")
    other = api.minted("password_reset", subject="user-7")
    bystander = api.minted(subject="user-8")
    assert api.redeem(used["token"]).status_code == 200
    assert api.redeem(used["token"]).status_code == 409  # the replay
    assert api.status(other["jti"]).get_json()["state"] == "revoked"
    assert api.status(bystander["jti"]).get_json()["state"] == "issued"
    history = api.status(other["jti"]).get_json()
    assert any(e["event"] == "revoked" and e.get("via") == "replay" for e in history["events"]), (
        history
    )
    replayed = api.status(used["jti"]).get_json()
    assert any(e["event"] == "replay_revoked" for e in replayed["events"]), replayed
    # Without endpoints no events are queued, but the policy acts all the same.
    assert rows(app) == []


def test_replay_policy_with_events(app, api, runner):
    add_endpoint(app, api.client.id)
    runner.invoke(args=["webhooks", "on-replay", api.client.id, "revoke-subject"])
    services(app).links.sinks.clear()
    used = api.minted(subject="user-7")
    other = api.minted(subject="user-7")
    api.redeem(used["token"])
    api.redeem(used["token"])
    assert types(app, other["jti"]) == ["link.minted", "link.revoked"]
    [rp] = [json.loads(r["payload"]) for r in rows(app) if r["event_type"] == "link.replayed"]
    assert rp["data"]["revoked_subject_links"] == 1


def test_the_same_browsers_late_second_press_is_no_replay_another_browsers_is(app, api, runner):
    """Issue 24: a second tab of the same browser pressed 12 s later is refused as used but
    revokes nothing; a press from a browser that is not the one that consumed the link is
    a replay, however soon."""
    from tests.web.test_pages import open_page, press

    add_endpoint(app, api.client.id)
    runner.invoke(args=["webhooks", "on-replay", api.client.id, "revoke-subject"])
    svc = services(app).links
    svc.sinks.clear()
    used = api.minted(subject="user-7")
    other = api.minted("password_reset", subject="user-7")
    browser, mallory = app.test_client(), app.test_client()
    _, first_tab = open_page(browser, used["url"])
    _, second_tab = open_page(browser, used["url"])
    _, stolen = open_page(mallory, used["url"])
    t0 = svc.now()
    svc.clock = lambda: t0
    assert press(browser, used["url"], first_tab).status_code == 303
    svc.clock = lambda: t0 + 12
    assert press(browser, used["url"], second_tab).status_code == 409
    svc.clock = lambda: t0 + 200  # much later still: the same browser
    assert press(browser, used["url"], first_tab).status_code == 409
    assert "link.replayed" not in types(app, used["jti"])
    assert api.status(other["jti"]).get_json()["state"] == "issued"

    svc.clock = lambda: t0 + 1
    assert press(mallory, used["url"], stolen).status_code == 409
    assert types(app, used["jti"]).count("link.replayed") == 1
    assert api.status(other["jti"]).get_json()["state"] == "revoked"


def test_no_policy_revokes_nothing(app, api):
    add_endpoint(app, api.client.id)
    used = api.minted(subject="user-7")
    other = api.minted(subject="user-7")
    api.redeem(used["token"])
    api.redeem(used["token"])
    assert api.status(other["jti"]).get_json()["state"] == "issued"
    assert "link.replayed" in types(app, used["jti"])


def test_metrics_report_a_failing_endpoint_and_the_backlog(app, api, client):
    add_endpoint(app, api.client.id)
    api.minted()
    svc = services(app).links
    now = int(time.time())
    [c] = outbox.claim(svc.engine, now=now, limit=1, lease_seconds=30)
    outbox.finish(svc.engine, c, status=500, error=None, duration_ms=1, now=now - 4 * 86400)
    [c] = outbox.claim(svc.engine, now=now, limit=1, lease_seconds=30)  # 4 days later
    assert (
        outbox.finish(
            svc.engine, c, status=500, error=None, duration_ms=1, now=now
        ).endpoint_disabled
        == "failing"
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert 'linksvc_webhook_endpoints{reason="failing",state="disabled"} 1.0' in text
    assert 'linksvc_webhook_outbox{state="pending"} 1.0' in text
    assert "linksvc_webhook_oldest_pending_seconds" in text


def test_deliveries_and_replay_by_hand(app, api, runner):
    add_endpoint(app, api.client.id)
    api.minted()
    svc = services(app).links
    now = int(time.time())
    [c] = outbox.claim(svc.engine, now=now, limit=1, lease_seconds=30)
    outbox.finish(svc.engine, c, status=204, error=None, duration_ms=3, now=now)
    out = runner.invoke(args=["webhooks", "deliveries", api.client.id, "--attempts", "--json"])
    [d] = json.loads(out.output)
    assert d["state"] == "delivered" and d["msg_id"] == c.msg_id
    assert [t["status"] for t in d["tries"]] == [204]
    # Times in the format of the API's (and the text output's): ISO 8601, UTC, seconds.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    assert d["delivered_at"] == d["tries"][0]["at"] == stamp
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["created_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["next_attempt_at"])
    [e] = json.loads(runner.invoke(args=["webhooks", "list", api.client.id, "--json"]).output)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["created_at"])
    assert e["disabled_at"] is None
    assert runner.invoke(args=["webhooks", "replay", api.client.id]).exit_code != 0
    out = runner.invoke(args=["webhooks", "replay", api.client.id, "msg_nope"])
    assert out.exit_code != 0 and "no delivery" in out.output
    out = runner.invoke(args=["webhooks", "replay", api.client.id, c.msg_id])
    assert out.exit_code == 0 and "queued 1" in out.output
    # The replay queued it at the service clock's now, which may be a second past ``now``.
    [again] = outbox.claim(svc.engine, now=int(time.time()), limit=1, lease_seconds=30)
    assert again.msg_id == c.msg_id and again.id == c.id  # same webhook-id, same row


@pytest.fixture
def pg_app(env, pg_url):
    pg = create_app({**env, "LINKSVC_DATABASE_URL": pg_url})
    from linksvc.store import migrate

    migrate.upgrade(services(pg).links.engine)
    _prepare(pg)
    yield pg
    services(pg).links.engine.dispose()


def test_postgresql_change_and_event_in_one_statement(pg_app, link_format):
    """On PostgreSQL the mint and the API redemption of a webhook client are each one
    statement (a data-modifying CTE) that writes the link change and its outbox row."""
    user = make_api_user(pg_app, link_format=link_format)
    add_endpoint(pg_app, user.client.id, events=["link.minted", "link.consumed"])
    add_endpoint(pg_app, user.client.id)
    link = user.minted()
    assert user.redeem(link["token"]).status_code == 200
    assert user.redeem(link["token"]).status_code == 409
    got = [(r["event_type"], r["jti"]) for r in rows(pg_app)]
    jti = link["jti"]
    assert sorted(got) == sorted(
        [("link.minted", jti)] * 2 + [("link.consumed", jti)] * 2 + [("link.replayed", jti)]
    )
    assert len({r["msg_id"] for r in rows(pg_app) if r["event_type"] == "link.minted"}) == 1
    body = json.loads(rows(pg_app)[0]["payload"])
    assert body["data"]["jti"] == jti and body["type"] == "link.minted"
    assert user.status(jti).get_json()["state"] == "consumed"
    # A client without endpoints still takes the plain one-statement path and writes nothing.
    plain = make_api_user(pg_app, "plain")
    plain_link = plain.minted()
    assert plain.redeem(plain_link["token"]).status_code == 200
    assert not [r for r in rows(pg_app) if r["jti"] == plain_link["jti"]]
