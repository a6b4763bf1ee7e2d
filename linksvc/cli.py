"""Command line: ``flask --app app init-db | clients … | keys … | mint | purge | partitions | demo``.

Thin commands over the plain functions of the domain modules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from linksvc import errors
from linksvc.clients import branding
from linksvc.clients import registry as clients_mod
from linksvc.config import PURPOSES, Settings
from linksvc.formats import iso
from linksvc.links import codes, idempotency, ledger
from linksvc.links import keys as keys_mod
from linksvc.links.service import LinkService
from linksvc.services import services
from linksvc.signins import flow as signins
from linksvc.store import db, migrate, partitions


def _svc() -> LinkService:
    return services().links


def _settings() -> Settings:
    return cast(Settings, current_app.config["LINKSVC"])


def _iso(ts: int | None) -> str:
    return iso(ts) or "-"


def _write_secret(path: Path) -> bytes:
    """Create a 32-byte secret file readable by its owner only."""
    value = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.urlsafe_b64encode(value).decode().rstrip("=") + "\n")
    return value


def _kek() -> bytes:
    kek = _settings().key_encryption_key
    if kek is None:
        raise click.ClickException(
            "no key-encryption key: run `.venv/bin/flask --app app init-db` "
            "or set LINKSVC_KEY_ENCRYPTION_KEY"
        )
    return kek


@click.command("init-db")
def init_db() -> None:
    """Bring the database to the current schema; create development secrets and keys."""
    s = _settings()
    svc = _svc()
    try:
        migrate.upgrade(svc.engine)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {type(exc).__name__}: {exc}") from exc
    click.echo(f"database at schema {migrate.current(svc.engine)}")
    kek = s.key_encryption_key
    if kek is None:
        kek = _write_secret(s.instance_path / "kek.key")
        click.echo(
            f"created development key-encryption key {s.instance_path / 'kek.key'} (mode 0600)"
        )
    if s.secret_key is None:
        _write_secret(s.instance_path / "secret.key")
        click.echo(f"created development secret {s.instance_path / 'secret.key'} (mode 0600)")
    with db.write(svc.engine) as conn:
        migrate.serialise_setup(conn)  # nodes running init-db at once create one key ring
        created = keys_mod.ensure_keys(conn, kek, svc.now())
    for k in created:
        click.echo(f"created {k.state} signing key {k.kid} ({k.alg})")


# -- clients ------------------------------------------------------------------------

clients_cli = AppGroup("clients", help="Manage client applications.")


def _client_json(c: clients_mod.Client) -> dict[str, object]:
    return {
        "client_id": c.id,
        "name": c.name,
        "display_name": c.display_name,
        "purposes": list(c.purposes),
        "redirect_uris": list(c.redirect_uris),
        "download_prefixes": list(c.download_prefixes),
        "mint_limit": c.mint_limit,
        "subject_limit": c.subject_limit,
        "allow_pii_subject": c.allow_pii_subject,
        "disabled": c.disabled,
        "restart_uri": c.restart_uri,
        "locale": c.locale,
        "link_format": c.link_format,
        "brand_color": c.brand_color,
        "support_url": c.support_url,
        "support_email": c.support_email,
        "mail_from_name": c.mail_from_name,
    }


def _brand_options(update: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The branding options of ``clients create`` and ``clients update`` (linksvc.clients.branding)."""
    clear = " '' removes it." if update else ""
    options = [
        click.option(
            "--logo",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Logo file: PNG, JPEG or WebP, at most 256 KiB and 2048x2048 pixels; "
            "re-encoded without metadata.",
        ),
        click.option(
            "--brand-color",
            help="Primary button colour, '#RRGGBB'; its button text must reach 4.5:1 contrast."
            + clear,
        ),
        click.option("--support-url", help="Help page shown on failure pages and mails." + clear),
        click.option("--support-email", help="Support address; also the mails' Reply-To." + clear),
        click.option(
            "--mail-from-name",
            help="Sender name of its mails (default: the display name); the address stays "
            "LINKSVC_MAIL_FROM." + clear,
        ),
    ]
    if update:
        options.append(click.option("--clear-logo", is_flag=True, help="Remove the logo."))

    def apply(fn: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _read_logo(path: Path | None) -> branding.Logo | None:
    if path is None:
        return None
    with path.open("rb") as fh:
        data = fh.read(branding.MAX_LOGO_BYTES + 1)
    try:
        return branding.process_logo(data)
    except branding.BrandingRefused as exc:
        raise click.ClickException(f"{path}: {exc.detail} ({exc.code})") from None


@clients_cli.command("create")
@click.argument("name")
@click.option(
    "--purposes",
    default="magic_link,password_reset,download",
    show_default=True,
    help="Comma-separated purposes the client may mint.",
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Allowed redirect URI (exact match). Repeatable.",
)
@click.option(
    "--download-prefix",
    "download_prefixes",
    multiple=True,
    help="Allowed download key prefix ('bucket:prefix' or 'prefix'). Repeatable.",
)
@click.option("--display-name", help="Name shown to end users (default: NAME).")
@click.option(
    "--restart-uri",
    help="Where a user whose link failed can request a new one (shown on the failure pages).",
)
@click.option("--mint-limit", help="Mint rate limit, e.g. '600 per minute'.")
@click.option("--subject-limit", help="Per-subject mint limit, e.g. '5 per 15 minutes'.")
@click.option(
    "--locale",
    help="Default language of its links' pages and mails (BCP 47: de, pt-BR, zh-Hans, ...).",
)
@click.option(
    "--link-format",
    type=click.Choice(clients_mod.LINK_FORMATS),
    help="How its links are written: jwt (the token in the path, the default) or short "
    "(<base>/l/<26-character handle>); the API answers the JWT as token either way.",
)
@_brand_options(update=False)
@click.option(
    "--allow-pii-subject", is_flag=True, help="Allow subjects that look like e-mail addresses."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON object with client_id and api_key."
)
def clients_create(
    name: str,
    purposes: str,
    redirect_uris: tuple[str, ...],
    download_prefixes: tuple[str, ...],
    display_name: str | None,
    restart_uri: str | None,
    mint_limit: str | None,
    subject_limit: str | None,
    locale: str | None,
    link_format: str | None,
    logo: Path | None,
    allow_pii_subject: bool,
    as_json: bool,
    **brand: str | None,
) -> None:
    """Register a client and print its API key (shown once). ``brand``: its brand colour,
    support URL and e-mail, and mail sender name (``_brand_options``)."""
    new_logo = _read_logo(logo)
    try:
        with db.write(_svc().engine) as conn:
            client, api_key = clients_mod.create(
                conn,
                name,
                purposes=purposes.split(","),
                redirect_uris=redirect_uris,
                download_prefixes=download_prefixes,
                display_name=display_name,
                mint_limit=mint_limit,
                subject_limit=subject_limit,
                allow_pii_subject=allow_pii_subject,
                allow_http_redirects=not _settings().is_production,
                restart_uri=restart_uri,
                locale=locale,
                link_format=link_format,
                **brand,
                now=_svc().now(),
            )
            if new_logo is not None:
                branding.save_logo(conn, client.id, new_logo, now=_svc().now())
    except (clients_mod.ClientError, branding.BrandingRefused) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**_client_json(client), "api_key": api_key}))
    else:
        click.echo(
            f"client_id: {client.id}\napi_key:   {api_key}\n(the API key is shown only now; store it safely)"
        )


@clients_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def clients_list(as_json: bool) -> None:
    """List clients (never their keys)."""
    with db.read(_svc().engine) as conn:
        all_clients = clients_mod.list_all(conn)
    if as_json:
        click.echo(json.dumps([_client_json(c) for c in all_clients]))
        return
    for c in all_clients:
        state = "disabled" if c.disabled else "enabled"
        click.echo(
            f"{c.id}  {c.name:<20} {state:<8} purposes={','.join(c.purposes)} "
            f"redirects={len(c.redirect_uris)} mint_limit={c.mint_limit or '-'} subject_limit={c.subject_limit or '-'}"
        )


def _find_client(conn: object, ident: str) -> clients_mod.Client:
    client = clients_mod.find(conn, ident)  # type: ignore[arg-type]
    if client is None:
        raise click.ClickException(f"no client {ident!r}")
    return client


@clients_cli.command("disable")
@click.argument("client")
def clients_disable(client: str) -> None:
    """Disable a client: its API key stops working within 5 seconds (workers cache keys that long);
    its one-time codes not yet exchanged are voided, and its sign-ins approved but not yet
    completed ended (their links revoked), at once."""
    now = _svc().now()
    with db.write(_svc().engine) as conn:
        c = _find_client(conn, client)
        clients_mod.update(conn, c.id, disabled=True)
        codes.void_client(conn, c.id, now)
        ended = ledger.end_approved_sign_ins_of(conn, now, via="client", client_id=c.id)
    _svc().client_cache.clear()
    click.echo(f"disabled {c.id} ({c.name}); revoked {ended} approved sign-in(s)")


@clients_cli.command("enable")
@click.argument("client")
def clients_enable(client: str) -> None:
    """Enable a disabled client again."""
    with db.write(_svc().engine) as conn:
        c = _find_client(conn, client)
        clients_mod.update(conn, c.id, disabled=False)
    click.echo(f"enabled {c.id} ({c.name})")


@clients_cli.command("update")
@click.argument("client")
@click.option("--display-name", help="Name shown to end users.")
@click.option("--purposes", help="Comma-separated purposes; replaces the list.")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Replace the redirect URIs with these (repeatable).",
)
@click.option("--add-redirect-uri", multiple=True, help="Add a redirect URI (repeatable).")
@click.option("--remove-redirect-uri", multiple=True, help="Remove a redirect URI (repeatable).")
@click.option(
    "--download-prefix",
    "download_prefixes",
    multiple=True,
    help="Replace the download prefixes with these (repeatable).",
)
@click.option("--add-download-prefix", multiple=True, help="Add a download prefix (repeatable).")
@click.option(
    "--remove-download-prefix", multiple=True, help="Remove a download prefix (repeatable)."
)
@click.option("--restart-uri", help="The 'Request a new link' page; '' removes it.")
@click.option("--mint-limit", help="Mint rate limit, e.g. '600 per minute'.")
@click.option("--subject-limit", help="Per-subject mint limit, e.g. '5 per 15 minutes'.")
@click.option("--locale", help="Default language of its pages and mails (BCP 47); '' removes it.")
@click.option(
    "--link-format",
    type=click.Choice(clients_mod.LINK_FORMATS),
    help="How its links are written: jwt (the token in the path) or short "
    "(<base>/l/<26-character handle>); links minted before keep theirs.",
)
@_brand_options(update=True)
@click.option("--json", "as_json", is_flag=True, help="Print the client as JSON afterwards.")
def clients_update(
    client: str,
    display_name: str | None,
    purposes: str | None,
    redirect_uris: tuple[str, ...],
    add_redirect_uri: tuple[str, ...],
    remove_redirect_uri: tuple[str, ...],
    download_prefixes: tuple[str, ...],
    add_download_prefix: tuple[str, ...],
    remove_download_prefix: tuple[str, ...],
    restart_uri: str | None,
    mint_limit: str | None,
    subject_limit: str | None,
    locale: str | None,
    link_format: str | None,
    clear_logo: bool,
    logo: Path | None,
    as_json: bool,
    **brand: str | None,
) -> None:
    """Change a client's registration: display name, purposes, redirect URIs, download
    prefixes, restart URI, limits, default locale, link format, and its face on pages and
    mails (logo, brand colour, support URL and e-mail, mail sender name). Takes effect within
    5 seconds (workers cache clients and logos)."""
    if logo is not None and clear_logo:
        raise click.UsageError("--logo and --clear-logo exclude each other")
    new_logo = _read_logo(logo)
    try:
        with db.write(_svc().engine) as conn:
            c = _find_client(conn, client)
            changes: dict[str, object] = {
                k: v
                for k, v in (
                    ("display_name", display_name),
                    ("mint_limit", mint_limit),
                    ("subject_limit", subject_limit),
                    ("restart_uri", restart_uri),
                    ("locale", locale),
                    ("link_format", link_format),
                    *brand.items(),
                )
                if v is not None
            }
            if purposes is not None:
                changes["purposes"] = purposes.split(",")
            for field, replace, add, remove in (
                ("redirect_uris", redirect_uris, add_redirect_uri, remove_redirect_uri),
                (
                    "download_prefixes",
                    download_prefixes,
                    add_download_prefix,
                    remove_download_prefix,
                ),
            ):
                if not (replace or add or remove):
                    continue
                current: list[str] = list(replace or getattr(c, field))
                missing = [v for v in remove if v not in current]
                if missing:
                    raise clients_mod.ClientError(
                        f"{c.name} has no {field[:-1].replace('_', ' ')} {missing[0]!r}"
                    )
                changes[field] = [v for v in [*current, *add] if v not in remove]
            if not changes and new_logo is None and not clear_logo:
                raise click.UsageError("nothing to change: give at least one option")
            if changes:
                clients_mod.update(
                    conn,
                    c.id,
                    allow_http_redirects=not _settings().is_production,
                    **cast(dict[str, Any], changes),
                )
            if new_logo is not None:
                branding.save_logo(conn, c.id, new_logo, now=_svc().now())
                changes["logo"] = new_logo.sha256
            elif clear_logo:
                branding.clear_logo(conn, c.id)
                changes["logo"] = None
            updated = _find_client(conn, c.id)
    except (clients_mod.ClientError, branding.BrandingRefused) as exc:
        raise click.ClickException(str(exc)) from None
    _svc().client_cache.clear()
    if as_json:
        click.echo(json.dumps(_client_json(updated)))
    else:
        click.echo(f"updated {c.id} ({c.name}): {', '.join(sorted(changes))}")


@clients_cli.command("rotate-key")
@click.argument("client")
@click.option("--json", "as_json", is_flag=True)
def clients_rotate_key(client: str, as_json: bool) -> None:
    """Give a client a new API key (shown once); the old one stops working within 5 seconds."""
    api_key = clients_mod.API_KEY_PREFIX + secrets.token_urlsafe(32)
    with db.write(_svc().engine) as conn:
        c = _find_client(conn, client)
        conn.execute(
            db.clients.update()
            .where(db.clients.c.id == c.id)
            .values(api_key_hash=clients_mod.hash_api_key(api_key))
        )
    _svc().client_cache.clear()
    if as_json:
        click.echo(json.dumps({"client_id": c.id, "api_key": api_key}))
    else:
        click.echo(f"client_id: {c.id}\napi_key:   {api_key}")


# -- keys -------------------------------------------------------------------------------

keys_cli = AppGroup("keys", help="Manage the signing key ring.")


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """Each key's state, algorithm and dates."""
    with db.read(_svc().engine) as conn:
        infos = keys_mod.list_keys(conn)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "kid": k.kid,
                        "alg": k.alg,
                        "state": k.state,
                        "created_at": k.created_at,
                        "activated_at": k.activated_at,
                        "retired_at": k.retired_at,
                        "removed_at": k.removed_at,
                    }
                    for k in infos
                ]
            )
        )
        return
    click.echo(
        f"{'kid':<32} {'alg':<6} {'state':<8} {'created':<21} {'activated':<21} {'retired':<21} removed"
    )
    for k in infos:
        click.echo(
            f"{k.kid:<32} {k.alg:<6} {k.state:<8} {_iso(k.created_at):<21} {_iso(k.activated_at):<21} "
            f"{_iso(k.retired_at):<21} {_iso(k.removed_at)}"
        )


@keys_cli.command("generate")
@click.option(
    "--alg", type=click.Choice(keys_mod.SUPPORTED_ALGS), default="ES256", show_default=True
)
def keys_generate(alg: str) -> None:
    """Create a new key. It becomes the ``next`` key (replacing an unused next key),
    or the active key if there is none."""
    try:
        with db.write(_svc().engine) as conn:
            info, replaced = keys_mod.generate(conn, _kek(), alg, _svc().now())
    except keys_mod.KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"created {info.state} key {info.kid} ({info.alg})"
        + (f"; removed unused next key {replaced}" if replaced else "")
    )
    if info.state == "next":
        click.echo(
            f"rotate to it after {_min_next_age()} s: `.venv/bin/flask --app app keys rotate`"
        )


def _min_next_age() -> int:
    return keys_mod.min_next_age(_settings().key_refresh_seconds)


def _retired_window() -> int:
    s = _settings()
    return keys_mod.retired_window(max(s.max_ttl.values()) + s.leeway, s.key_refresh_seconds)


@keys_cli.command("rotate")
@click.option(
    "--alg",
    type=click.Choice(keys_mod.SUPPORTED_ALGS),
    default=None,
    help="Algorithm of the new next key (default: same as the key being activated).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Activate the next key even if verifiers caching the JWKS may not know it yet (emergencies).",
)
def keys_rotate(alg: str | None, force: bool) -> None:
    """Activate the next key, retire the active one, and publish a new next key."""
    try:
        with db.write(_svc().engine) as conn:
            old, active, nxt = keys_mod.rotate(
                conn, _kek(), _svc().now(), alg, min_age=0 if force else _min_next_age()
            )
    except keys_mod.KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    s = _settings()
    click.echo(f"retired {old or '-'}; active {active}; next {nxt}")
    click.echo(
        f"every worker signs with {active} within {s.key_refresh_seconds} s; "
        f"{old or 'the old key'} verifies for {_retired_window()} s more"
    )


@keys_cli.command("retire")
def keys_retire() -> None:
    """Remove retired keys whose tokens have all expired (safe to run from cron)."""
    now = _svc().now()
    with db.write(_svc().engine) as conn:
        done = keys_mod.retire_expired(conn, now, _retired_window())
        # A removed key's links cannot complete a sign-in (their codes would be refused).
        ended = ledger.end_approved_sign_ins_of(conn, now, via="key", kids=done) if done else 0
    click.echo(
        f"removed {len(done)} retired key(s){': ' + ', '.join(done) if done else ''}"
        + (f"; revoked {ended} approved sign-in(s)" if ended else "")
    )


@keys_cli.command("revoke")
@click.argument("kid")
@click.confirmation_option(prompt="Links signed by this key stop working at once. Continue?")
def keys_revoke(kid: str) -> None:
    """Emergency: remove a key now. Its links fail with unknown_key."""
    now = _svc().now()
    try:
        with db.write(_svc().engine) as conn:
            info, notes = keys_mod.revoke(conn, _kek(), kid, now)
            ended = ledger.end_approved_sign_ins_of(conn, now, via="key", kids=[kid])
    except keys_mod.KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    notes.append(f"revoked {ended} approved sign-in(s)")
    click.echo(f"revoked {info.kid}{'; ' + '; '.join(notes)}")
    click.echo(f"workers stop accepting it within {_settings().key_refresh_seconds} s")


@keys_cli.command("rewrap")
@click.option(
    "--old-kek",
    prompt="Old LINKSVC_KEY_ENCRYPTION_KEY",
    hide_input=True,
    help="The key-encryption key the keys are stored under now (prompted, or one line on stdin).",
)
def keys_rewrap(old_kek: str) -> None:
    """Re-encrypt the signing keys under the current LINKSVC_KEY_ENCRYPTION_KEY (KEK rotation)."""
    raw = old_kek.strip()
    try:
        old = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (ValueError, TypeError):
        raise click.ClickException("the old key-encryption key must be base64url") from None
    if len(old) < 32:
        raise click.ClickException("the old key-encryption key must decode to at least 32 bytes")
    try:
        with db.write(_svc().engine) as conn:
            done = keys_mod.rewrap(conn, old, _kek())
    except keys_mod.KeyRingError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(
        f"re-encrypted {len(done)} key(s) under the current key-encryption key"
        f"{': ' + ', '.join(done) if done else ''}"
    )


# -- links --------------------------------------------------------------------------------


@click.command("mint")
@click.argument("client")
@click.option("--purpose", type=click.Choice(PURPOSES), required=True)
@click.option("--subject", required=True)
@click.option("--ttl", type=int)
@click.option("--redirect-uri")
@click.option("--download-key")
@click.option("--filename")
def mint_cmd(
    client: str,
    purpose: str,
    subject: str,
    ttl: int | None,
    redirect_uri: str | None,
    download_key: str | None,
    filename: str | None,
) -> None:
    """Mint a link by hand and print its URL."""
    svc = _svc()
    with db.read(svc.engine) as conn:
        c = _find_client(conn, client)
    download = None
    if download_key:
        download = {"key": download_key, **({"filename": filename} if filename else {})}
    try:
        minted = svc.mint(
            c,
            purpose=purpose,
            subject=subject,
            ttl=ttl,
            redirect_uri=redirect_uri,
            download=download,
        )
    except errors.RequestRefused as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None
    except errors.ServiceUnavailable as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(minted.url)
    click.echo(f"jti {minted.record.jti}, expires {_iso(minted.record.exp)}", err=True)


@click.command("purge")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10000),
    default=1000,
    show_default=True,
    help="Rows deleted per transaction; smaller batches hold locks for less time.",
)
@click.option(
    "--retention-days", type=click.IntRange(1, 3650), help="Override LINKSVC_RETENTION_DAYS."
)
@click.option(
    "--max-batches",
    type=click.IntRange(1),
    help="Stop after this many batches per table (next run continues).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON (for monitoring).")
def purge_cmd(
    batch_size: int, retention_days: int | None, max_batches: int | None, as_json: bool
) -> None:
    """Delete ledger rows past exp plus the retention period, in batches (safe beside traffic)."""
    s = _settings()
    days = retention_days if retention_days is not None else s.retention_days
    try:
        links = ledger.purge(
            _svc().engine,
            now=_svc().now(),
            retention_seconds=days * 86400,
            batch_size=batch_size,
            max_batches=max_batches,
        )
        removed_codes, code_batches = codes.purge(
            _svc().engine,
            expired_before=_svc().now() - days * 86400,
            batch_size=batch_size,
            max_batches=max_batches,
        )
        # The counts in the order they have always been printed in.
        removed = {
            "links": links["links"],
            "events": links["events"],
            "codes": removed_codes,
            **links,
            "batches": links["batches"] + code_batches,
        }
        # Sign-ins go with their links (linksvc.signins.flow).
        removed["sign_ins"] = signins.purge(
            _svc().engine,
            now=_svc().now(),
            retention_seconds=days * 86400,
            batch_size=batch_size,
        )
        # Idempotency keys name their link for 24 h only (linksvc.links.idempotency).
        removed["idempotency_keys"] = idempotency.purge(
            _svc().engine, now=_svc().now(), batch_size=batch_size
        )
    except errors.ServiceUnavailable as exc:
        raise click.ClickException(exc.detail) from None
    if as_json:
        click.echo(json.dumps({**removed, "retention_days": days}))
    else:
        click.echo(
            f"purged {removed['links']} link(s), {removed['events']} event(s), {removed['codes']} code(s) "
            f"older than {days} day(s) past expiry"
            + (
                f"; {removed['partitions_dropped']} day partition(s) dropped, "
                f"{removed['partitions_created']} created ahead"
                if removed["partitions_dropped"] or removed["partitions_created"]
                else ""
            )
        )


@click.command("partitions")
@click.option(
    "--ahead-days",
    type=click.IntRange(1, 60),
    default=partitions.AHEAD_DAYS,
    show_default=True,
    help="Days of partitions to keep ready past today.",
)
def partitions_cmd(ahead_days: int) -> None:
    """Create the ledger's day partitions ahead (PostgreSQL; nothing to do on SQLite), and
    move rows the default partition caught into their day. Run it hourly, beside purge."""
    engine = _svc().engine
    try:
        with db.read(engine) as conn:
            partitioned = partitions.is_partitioned(conn)
        created = (
            partitions.ensure_ahead(engine, now=_svc().now(), ahead_days=ahead_days)
            if partitioned
            else []
        )
    except errors.ServiceUnavailable as exc:
        raise click.ClickException(exc.detail) from None
    if not partitioned:
        click.echo("the ledger is not partitioned (SQLite): nothing to do")
        return
    click.echo(f"created {len(created)} partition(s){': ' + ', '.join(created) if created else ''}")


#: The demo client: the example application's registration, made by ``make run``.
DEMO_CLIENT = "demo"
#: One name for the demo client and the example application, on every page and mail.
DEMO_DISPLAY_NAME = "Example App"


def demo_api_key(secret_key: bytes) -> str:
    """The demo client's development API key: derived from the instance's secret, so it stays
    the same across `make run`s (an example application started with it keeps working) and
    is worth nothing outside this instance. Only ever used with ``LINKSVC_ENV=development``."""
    digest = hmac.new(secret_key, b"linksvc demo client api key v1", hashlib.sha256).digest()
    return clients_mod.API_KEY_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@click.command("demo")
@click.option(
    "--app-url",
    default="http://127.0.0.1:5001",
    show_default=True,
    help="The example application's URL; its /callback becomes the demo client's redirect URI.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write LINKSVC_URL, LINKSVC_API_KEY and RELYING_APP_URL there (mode 0600), "
    "for the example application.",
)
def demo_cmd(app_url: str, env_file: Path | None) -> None:
    """Create or refresh the demo client (the example application's) and print a ready curl
    line. For `make run`. In development the API key is the same on every run."""
    svc = _svc()
    s = _settings()
    if s.is_production:
        raise click.ClickException("`demo` is for development: it registers a demo client")
    app_url = app_url.rstrip("/")
    try:
        clients_mod.validate_redirect_uri(app_url + "/callback", allow_http=True)
    except clients_mod.ClientError as exc:
        raise click.ClickException(f"--app-url: {exc}") from None
    stable = s.env == "development" and s.secret_key is not None
    api_key = (
        demo_api_key(s.secret_key)  # type: ignore[arg-type]
        if stable
        else clients_mod.API_KEY_PREFIX + secrets.token_urlsafe(32)
    )
    registration: dict[str, Any] = {
        "display_name": DEMO_DISPLAY_NAME,
        "purposes": list(PURPOSES),
        "redirect_uris": [app_url + "/callback"],
        "restart_uri": app_url + "/",
        "disabled": False,
    }
    with db.write(svc.engine) as conn:
        client = clients_mod.find(conn, DEMO_CLIENT)
        if client is None:
            client, _ = clients_mod.create(
                conn,
                DEMO_CLIENT,
                display_name=DEMO_DISPLAY_NAME,
                purposes=list(PURPOSES),
                redirect_uris=[app_url + "/callback"],
                mint_limit="10000 per minute",
                subject_limit="1000 per minute",
                now=_svc().now(),
            )
        # The key is stored only as a hash: set it (again) each run, with the registration,
        # so a changed --app-url (make run APP_PORT=…) is the one registered.
        clients_mod.update(conn, client.id, **registration)
        conn.execute(
            db.clients.update()
            .where(db.clients.c.id == client.id)
            .values(api_key_hash=clients_mod.hash_api_key(api_key))
        )
    svc.client_cache.clear()
    if env_file is not None:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                f"LINKSVC_URL={s.base_url}\nLINKSVC_API_KEY={api_key}\nRELYING_APP_URL={app_url}\n"
            )
    base = s.base_url
    lifetime = "the same on every `make run`" if stable else "new each run"
    click.echo(f"""
linksvc demo client {client.id} ("{DEMO_DISPLAY_NAME}", redirect URI {app_url}/callback)
  API key ({lifetime}; development only): {api_key}

  export KEY={api_key}
  curl -s -X POST {base}/api/v1/links -H "Authorization: Bearer $KEY" \\
       -H 'Content-Type: application/json' -d '{{"purpose":"magic_link","subject":"user-42"}}'
""")
    mailer = services().mailer
    if mailer is not None:
        # Add "email":"you@example.com" to the mint body to have the link mailed.
        where = (
            "SMTP " if s.smtp_url else "outbox folder (.eml files; no LINKSVC_SMTP_URL) "
        ) + mailer.transport.describe()
        click.echo(f'  Mail ("email" in the mint body) goes to: {where}')
        if services().dev_outbox is not None:
            click.echo(f"  Read it in the browser: {base}/dev/outbox\n")
        else:
            click.echo("")
    if s.storage == "local":
        # A file to link to: `make run` shows a download link working out of the box.
        sample = s.storage_dir / "samples" / "welcome.txt"
        if not sample.exists():
            sample.parent.mkdir(parents=True, exist_ok=True)
            sample.write_text(
                "Hello from linksvc. This file was delivered through a single-use download link.\n"
            )
        click.echo(f"""  Download link to the sample file {sample} (open its "url" once; the second time says used):
  curl -s -X POST {base}/api/v1/links -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d '{{"purpose":"download","subject":"user-42","download":{{"key":"samples/welcome.txt","filename":"welcome.txt"}}}}'
""")


def init_app(app: Flask) -> None:
    for cmd in (init_db, clients_cli, keys_cli, mint_cmd, purge_cmd, partitions_cmd, demo_cmd):
        app.cli.add_command(cmd)
