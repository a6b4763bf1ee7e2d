"""The key ring: lifecycle and its timing (with the ring's clock, never sleeping),
revocation, the JWKS, storage at rest, concurrent rotations, and production start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from jwt import PyJWK

from linksvc import create_app, errors
from linksvc.links import keys, tokens
from linksvc.services import services
from linksvc.store import db, migrate
from tests.support import forge
from tests.support.env import ROOT, _clean_environ, base_env, flask_cli, secret_b64
from tests.support.servers import start_gunicorn

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _ring(app, clock, refresh=1) -> keys.KeyRing:
    s = app.config["LINKSVC"]
    return keys.KeyRing(
        services(app).links.engine,
        s.key_encryption_key,
        refresh_seconds=refresh,
        max_lifetime=max(s.max_ttl.values()) + s.leeway,
        clock=clock,
    )


def _by_state(app) -> dict[str, list[keys.KeyInfo]]:
    with db.read(services(app).links.engine) as conn:
        found: dict[str, list[keys.KeyInfo]] = {}
        for k in keys.list_keys(conn):
            found.setdefault(k.state, []).append(k)
    return found


def _write(app):
    return db.write(services(app).links.engine)


def _kek(app) -> bytes:
    return app.config["LINKSVC"].key_encryption_key


def _token(key: tokens.SigningKey, iat: int, ttl: int = 300, aud: str = "cl_x") -> str:
    c = tokens.Claims(
        iss="http://127.0.0.1:8000",
        aud=aud,
        sub="u1",
        pur="magic_link",
        jti=tokens.new_jti(),
        iat=iat,
        nbf=iat,
        exp=iat + ttl,
    )
    return tokens.sign(c, key)


def _verify(ring: keys.KeyRing, token: str, now: int) -> tokens.VerifiedToken:
    return tokens.verify(
        token,
        keys=ring,
        issuer="http://127.0.0.1:8000",
        purposes=("magic_link",),
        audience=None,
        now=now,
        leeway=5,
        ceilings={"magic_link": 300, "password_reset": 300, "download": 300},
    )


# -- lifecycle and timing --------------------------------------------------------------


def test_rotation_publishes_before_signing_and_retired_keys_verify_for_their_window(app):
    states = _by_state(app)
    a0, n1 = states["active"][0], states["next"][0]
    refresh = 5
    clock = Clock(n1.created_at)
    ring = _ring(app, clock, refresh=refresh)
    assert ring.signing_key().kid == a0.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {a0.kid, n1.kid}
    old_token = _token(ring.signing_key(), iat=int(clock.t))

    # The next key has been public for less than a JWKS cache lifetime: rotation refuses.
    min_age = keys.min_next_age(refresh)
    with pytest.raises(keys.KeyRingError, match="published for only"), _write(app) as conn:
        keys.rotate(conn, _kek(app), n1.created_at + min_age - 1, min_age=min_age)
    t_rot = n1.created_at + min_age
    clock.t = t_rot - 0.2
    assert ring.signing_key().kid == a0.kid  # this worker loaded the ring just before the rotation
    with _write(app) as conn:
        retired, active, nxt = keys.rotate(conn, _kek(app), t_rot, min_age=min_age)
    assert (retired, active) == (a0.kid, n1.kid)

    # Until its next refresh the worker still signs with the old key; the last such link
    # (iat t_rot + 4) expires at t_rot + 304 and verifies, with 5 s leeway, to t_rot + 308.
    clock.t = t_rot + 4.7
    assert ring.signing_key().kid == a0.kid
    stale_token = _token(ring.signing_key(), iat=int(clock.t))
    clock.t = t_rot + 4.8
    assert ring.signing_key().kid == n1.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {a0.kid, n1.kid, nxt}

    # So the retired key stays published and verifying for ceiling + leeway + refresh.
    window = ring.window
    assert window == 300 + 5 + refresh
    for t in (t_rot + 308, t_rot + window):
        clock.t = t
        assert _verify(ring, stale_token, now=t_rot + 308).kid == a0.kid
        assert a0.kid in {k["kid"] for k in ring.jwks()["keys"]}
    with _write(app) as conn:
        assert keys.retire_expired(conn, t_rot + window, window) == []

    # One second later it is gone from the JWKS and from verification, even before `keys retire`.
    clock.t = t_rot + window + 1
    assert a0.kid not in {k["kid"] for k in ring.jwks()["keys"]}
    with pytest.raises(errors.UnknownKey):
        _verify(ring, old_token, now=int(clock.t))
    with _write(app) as conn:
        assert keys.retire_expired(conn, t_rot + window + 1, window) == [a0.kid]
    assert _by_state(app)["removed"][0].kid == a0.kid


def test_rotate_without_a_next_key_refuses_unless_forced(app):
    now = _by_state(app)["next"][0].created_at + 10_000
    with _write(app) as conn:
        keys.generate(conn, _kek(app), "EdDSA", now)  # replaces the next key
        nxt = [k for k in keys.list_keys(conn) if k.state == "next"]
        assert [k.alg for k in nxt] == ["EdDSA"]
        conn.execute(
            db.signing_keys.update()
            .where(db.signing_keys.c.state == "next")
            .values(state="removed")
        )
    with pytest.raises(keys.KeyRingError, match="no next key"), _write(app) as conn:
        keys.rotate(conn, _kek(app), now, min_age=305)
    with _write(app) as conn:
        keys.rotate(conn, _kek(app), now, "RS256", min_age=0)
    states = _by_state(app)
    assert len(states["active"]) == 1 and [k.alg for k in states["next"]] == ["RS256"]


def test_new_key_algorithm_is_for_life(app):
    """Rotation keeps each key's algorithm; --alg chooses only the new next key's."""
    with _write(app) as conn:
        keys.generate(conn, _kek(app), "RS256", 2_000_000_000)
        _, active, nxt = keys.rotate(conn, _kek(app), 2_000_001_000, "EdDSA", min_age=305)
        algs = {k.kid: k.alg for k in keys.list_keys(conn)}
    assert algs[active] == "RS256" and algs[nxt] == "EdDSA"


# -- revocation ------------------------------------------------------------------------


def test_revoked_key_fails_with_unknown_key_and_minting_continues(app, api, runner):
    svc = services(app).links
    minted = api.minted()
    old_kid = forge.split(minted["token"])[0]["kid"]
    next_kid = _by_state(app)["next"][0].kid

    out = runner.invoke(args=["keys", "revoke", old_kid])  # no --yes: asks, and stops on no answer
    assert out.exit_code != 0 and _by_state(app)["active"][0].kid == old_kid
    out = runner.invoke(args=["keys", "revoke", old_kid, "--yes"])
    assert out.exit_code == 0, out.output
    assert f"revoked {old_kid}" in out.output and f"active {next_kid}" in out.output
    svc.keyring.reload()  # workers do this within LINKSVC_KEY_REFRESH_SECONDS (test_rotation.py)

    for call in (api.redeem, api.verify):
        resp = call(minted["token"])
        assert resp.status_code == 401 and resp.get_json()["code"] == "unknown_key"
        assert minted["token"] not in resp.get_data(as_text=True)
    assert api.status(minted["jti"]).get_json()["state"] == "issued"  # refused, not consumed
    assert old_kid not in {
        k["kid"] for k in api.http.get("/.well-known/jwks.json").get_json()["keys"]
    }

    fresh = api.minted()
    assert forge.split(fresh["token"])[0]["kid"] == next_kid
    assert api.redeem(fresh["token"]).status_code == 200
    states = _by_state(app)
    assert [k.kid for k in states["active"]] == [next_kid] and len(states["next"]) == 1


def test_revoking_retired_and_next_keys_and_mistakes(app, runner):
    with _write(app) as conn:
        old, active, nxt = keys.rotate(conn, _kek(app), 2_000_000_000, min_age=0)
    out = runner.invoke(args=["keys", "revoke", old, "--yes"])
    assert out.exit_code == 0 and _by_state(app)["active"][0].kid == active
    out = runner.invoke(args=["keys", "revoke", nxt, "--yes"])
    assert out.exit_code == 0 and "next " in out.output
    states = _by_state(app)
    assert len(states["next"]) == 1 and states["next"][0].kid != nxt
    for kid, message in ((old, "already removed"), ("es256-nope", "no key")):
        out = runner.invoke(args=["keys", "revoke", kid, "--yes"])
        assert out.exit_code != 0 and message in out.output and "Traceback" not in out.output


def test_revoking_the_active_key_without_a_next_key_still_replaces_it(app):
    t = db.signing_keys
    with _write(app) as conn:
        conn.execute(t.update().where(t.c.state == "next").values(state="removed"))
        active = next(k for k in keys.list_keys(conn) if k.state == "active")
        info, _notes = keys.revoke(conn, _kek(app), active.kid, 2_000_000_000)
    states = _by_state(app)
    assert info.state == "removed" and len(states["active"]) == 1 and len(states["next"]) == 1
    assert states["active"][0].kid != active.kid


# -- algorithm confusion at the API ----------------------------------------------------


@pytest.mark.parametrize("header_alg", ["EdDSA", "RS256", "HS256", "none", "ES512"])
def test_known_kid_with_another_algorithm_is_refused_at_the_api(app, api, header_alg):
    minted = api.minted()
    header, claims, _ = forge.split(minted["token"])
    key = forge.signing_key(app)
    forged = forge.resign({**header, "alg": header_alg}, claims, key)
    resp = api.redeem(forged)
    assert resp.status_code == 401 and resp.get_json()["code"] == "wrong_algorithm"
    assert api.redeem(minted["token"]).status_code == 200  # the real link was not consumed


# -- the JWKS --------------------------------------------------------------------------


def test_jwks_holds_only_public_members_of_every_algorithm(app, api):
    svc = services(app).links
    kids = {}
    for alg in ("EdDSA", "RS256", "ES256"):
        with _write(app) as conn:
            keys.generate(conn, _kek(app), alg, 2_000_000_000)
            _, kids[alg], _ = keys.rotate(conn, _kek(app), 2_000_000_000, min_age=0)
        svc.keyring.reload()
        minted = api.minted()
        assert forge.split(minted["token"])[0] == {"alg": alg, "kid": kids[alg], "typ": "link+jwt"}
        kids[alg] = (kids[alg], minted["token"])

    # A row whose stored public JWK was tampered with to carry private or symmetric members.
    t = db.signing_keys
    with _write(app) as conn:
        row = conn.execute(sa.select(t.c.kid, t.c.public_jwk).where(t.c.state == "next")).one()
        jwk = {**json.loads(row.public_jwk), "d": "AAAA", "k": "c2VjcmV0", "p": "AQAB"}
        conn.execute(t.update().where(t.c.kid == row.kid).values(public_jwk=json.dumps(jwk)))
    svc.keyring.reload()

    resp = api.http.get("/.well-known/jwks.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    published = resp.get_json()["keys"]
    assert len(published) >= 5
    allowed = {"EC": {"kty", "crv", "x", "y"}, "OKP": {"kty", "crv", "x"}, "RSA": {"kty", "n", "e"}}
    for k in published:
        assert not set(k) & PRIVATE_MEMBERS, k
        assert k["kty"] in allowed and set(k) == allowed[k["kty"]] | {"kid", "alg", "use"}
        assert k["use"] == "sig" and k["alg"] in keys.SUPPORTED_ALGS
    by_kid = {k["kid"]: k for k in published}
    for alg, (kid, token) in kids.items():
        jwk = PyJWK(by_kid[kid])
        assert jwk.algorithm_name == alg
        # The published key alone verifies the token (the signature, not the claims).
        h, c, s = token.split(".")
        assert tokens.ALGORITHMS[alg].verify(
            f"{h}.{c}".encode(), jwk.key, forge.base64.urlsafe_b64decode(s + "==")
        )


def test_jwks_cache_lifetime_is_shorter_than_the_next_period(app, client):
    resp = client.get("/.well-known/jwks.json")
    max_age = int(re.search(r"max-age=(\d+)", resp.headers["Cache-Control"]).group(1))
    refresh = app.config["LINKSVC"].key_refresh_seconds
    # A verifier's cached JWKS expires before the next key it does not know can sign.
    assert 0 < max_age < keys.min_next_age(refresh)
    nxt = _by_state(app)["next"][0]
    with pytest.raises(keys.KeyRingError), _write(app) as conn:
        keys.rotate(conn, _kek(app), nxt.created_at + max_age, min_age=keys.min_next_age(refresh))


def test_a_worker_keeps_its_last_keys_while_the_database_is_away(app, tmp_path):
    clock = Clock(2_000_000_000)
    ring = _ring(app, clock)
    kid = ring.signing_key().kid
    dead = sa.create_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    ring._engine = dead
    clock.t += 60
    assert ring.signing_key().kid == kid and len(ring.jwks()["keys"]) == 2
    assert ring.verification_key(kid).kid == kid
    fresh = keys.KeyRing(dead, _kek(app), clock=clock)
    with pytest.raises(errors.ServiceUnavailable):
        fresh.jwks()
    with pytest.raises(keys.KeyRingError, match="cannot read the signing keys"):
        fresh.check()
    dead.dispose()


# -- storage at rest -------------------------------------------------------------------


def test_private_keys_are_encrypted_and_bound_to_their_row(app):
    t = db.signing_keys
    with _write(app) as conn:
        keys.generate(conn, _kek(app), "RS256", 2_000_000_000)
        rows = {r.kid: r for r in conn.execute(sa.select(t))}
    for r in rows.values():
        assert b"PRIVATE KEY" not in r.private_key_enc and b"-----" not in r.private_key_enc
    assert len({r.private_key_enc for r in rows.values()}) == len(rows)
    active = _by_state(app)["active"][0]
    other = next(k for k in rows if k != active.kid)
    # Moving another key's ciphertext into the active row does not give a usable key.
    with _write(app) as conn:
        conn.execute(
            t.update()
            .where(t.c.kid == active.kid)
            .values(private_key_enc=rows[other].private_key_enc)
        )
    ring = _ring(app, Clock(2_000_000_000))
    with pytest.raises(keys.KeyRingError, match="cannot decrypt"):
        ring.check()
    with pytest.raises(errors.ServiceUnavailable):
        ring.signing_key()


def test_removed_keys_lose_their_private_key(app):
    t = db.signing_keys
    with _write(app) as conn:
        old, _, nxt = keys.rotate(conn, _kek(app), 2_000_000_000, min_age=0)
        keys.generate(conn, _kek(app), "EdDSA", 2_000_000_000)  # removes the unused next key
        keys.retire_expired(conn, 2_000_000_000 + 10_000, 310)
        blobs = {r.kid: (r.state, r.private_key_enc) for r in conn.execute(sa.select(t))}
    assert blobs[old] == ("removed", b"") and blobs[nxt] == ("removed", b"")
    assert all(blob for state, blob in blobs.values() if state != "removed")


def test_kek_rotation_rewraps_every_key(app, env):
    old_kek = env["LINKSVC_KEY_ENCRYPTION_KEY"]
    new_app = create_app({**env, "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64()})
    try:
        with pytest.raises(keys.KeyRingError):
            services(new_app).links.keyring.check()
        runner = new_app.test_cli_runner()
        wrong = runner.invoke(args=["keys", "rewrap"], input=secret_b64() + "\n")
        assert wrong.exit_code != 0 and "nothing was changed" in wrong.output
        assert "Traceback" not in wrong.output and old_kek not in wrong.output
        done = runner.invoke(args=["keys", "rewrap"], input=old_kek + "\n")
        assert done.exit_code == 0 and "re-encrypted 2 key(s)" in done.output, done.output
        assert old_kek not in done.output
        services(new_app).links.keyring.check()
        with pytest.raises(keys.KeyRingError, match="cannot decrypt"):
            _ring(app, Clock(2_000_000_000)).check()  # the old KEK no longer opens anything
        again = runner.invoke(args=["keys", "rewrap"], input=old_kek + "\n")
        assert again.exit_code == 0 and "re-encrypted 0 key(s)" in again.output
    finally:
        services(new_app).links.engine.dispose()


def test_a_public_key_that_does_not_match_the_private_key_is_refused(app):
    t = db.signing_keys
    states = _by_state(app)
    with _write(app) as conn:
        conn.execute(
            t.update()
            .where(t.c.kid == states["active"][0].kid)
            .values(public_jwk=json.dumps(states["next"][0].public_jwk))
        )
    with pytest.raises(keys.KeyRingError, match="does not match"):
        _ring(app, Clock(2_000_000_000)).check()


def test_wrong_kek_stops_minting_with_503_but_not_verification(app, env, api):
    minted = api.minted()
    other = create_app({**env, "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64()})
    try:
        http = other.test_client()
        resp = http.post(
            "/api/v1/links", json={"purpose": "magic_link", "subject": "u-1"}, headers=api.headers
        )
        assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
        assert "Traceback" not in resp.get_data(as_text=True)
        assert http.get("/.well-known/jwks.json").status_code == 200
        ok = http.post(
            "/api/v1/links/redeem",
            json={"token": minted["token"], "purpose": "magic_link"},
            headers=api.headers,
        )
        assert ok.status_code == 200
        with pytest.raises(keys.KeyRingError, match="LINKSVC_KEY_ENCRYPTION_KEY cannot decrypt"):
            services(other).links.keyring.check()
    finally:
        services(other).links.engine.dispose()


# -- concurrent rotations (PostgreSQL, where they really overlap) ----------------------


def test_concurrent_rotations_leave_one_active_and_one_next_key(pg_url):
    engine = db.make_engine(pg_url)
    try:
        migrate.upgrade(engine)
        kek = bytes(32)
        with db.write(engine) as conn:
            keys.ensure_keys(conn, kek, 2_000_000_000)
        n = 6
        barrier = threading.Barrier(n)
        outcomes: list[str] = []

        def one(i: int) -> None:
            barrier.wait()
            try:
                with db.write(engine) as conn:
                    keys.rotate(conn, kek, 2_000_000_000 + i, min_age=0)
                outcomes.append("rotated")
            except keys.KeyRingError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        with db.read(engine) as conn:
            states = [k.state for k in keys.list_keys(conn)]
        assert len(outcomes) == n
        assert states.count("active") == 1 and states.count("next") == 1, (states, outcomes)
        assert states.count("retired") == outcomes.count("rotated")
    finally:
        engine.dispose()


# -- the CLI ---------------------------------------------------------------------------


def test_keys_cli_generate_rotate_list_retire(app, runner):
    out = runner.invoke(args=["keys", "generate", "--alg", "EdDSA"])
    assert (
        out.exit_code == 0
        and "created next key eddsa-" in out.output
        and "removed unused next key" in out.output
    )
    out = runner.invoke(args=["keys", "rotate"])
    assert out.exit_code != 0 and "--force" in out.output and "Traceback" not in out.output
    out = runner.invoke(args=["keys", "rotate", "--force", "--alg", "RS256"])
    assert out.exit_code == 0 and "active eddsa-" in out.output and "next rs256-" in out.output
    out = runner.invoke(args=["keys", "list"])
    lines = out.output.splitlines()
    assert lines[0].split()[:4] == ["kid", "alg", "state", "created"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(r[2] for r in rows.values()) == ["active", "next", "removed", "retired"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[3]) for r in rows.values())
    listed = json.loads(runner.invoke(args=["keys", "list", "--json"]).output)
    assert {k["alg"] for k in listed} == {"ES256", "EdDSA", "RS256"}
    out = runner.invoke(args=["keys", "retire"])  # the retired key is still within its window
    assert out.exit_code == 0 and "removed 0 retired key(s)" in out.output
    bad = runner.invoke(args=["keys", "generate", "--alg", "HS256"])
    assert bad.exit_code != 0 and "HS256" in bad.output


# -- production start-up ----------------------------------------------------------------


def _import_app(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import app; print('started')"],
        cwd=ROOT,
        env={**_clean_environ(), **env},
        text=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.slow
def test_production_start_refuses_without_a_usable_key(tmp_path):
    instance = tmp_path / "instance"
    env = base_env(instance, LINKSVC_ENV="production")

    # Nothing initialised: `import app` (what gunicorn does) stops with a clear message.
    started = _import_app(env)
    assert started.returncode == 4 and "started" not in started.stdout
    assert "linksvc: cannot start:" in started.stderr and "init-db" in started.stderr
    assert "Traceback" not in started.stderr
    with pytest.raises(RuntimeError, match="linksvc: cannot start"):
        start_gunicorn(env, workers=1, log_path=tmp_path / "refused.log", timeout=20)

    # The CLI still works in production, so that the keys can be made.
    flask_cli(env, "init-db")

    # A KEK that does not open the active key.
    wrong = _import_app({**env, "LINKSVC_KEY_ENCRYPTION_KEY": secret_b64()})
    assert wrong.returncode == 4 and "cannot decrypt signing key" in wrong.stderr

    # No active key left (all removed): refused again, and the CLI can repair it.
    engine = sa.create_engine(env["LINKSVC_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(db.signing_keys.update().values(state="removed"))
    engine.dispose()
    gone = _import_app(env)
    assert gone.returncode == 4 and "no active signing key" in gone.stderr
    flask_cli(env, "keys", "generate")
    server = start_gunicorn(env, workers=1, log_path=tmp_path / "ok.log", timeout=20)
    try:
        import requests

        assert requests.get(server.url + "/.well-known/jwks.json", timeout=5).status_code == 200
    finally:
        server.stop()
