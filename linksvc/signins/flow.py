"""Sign-ins that complete on the device that asked (PRODUCT §6).

A sign-in is a pending request of one browser — the *requesting browser* — that a magic
link approves. The application starts it (:func:`start`); linksvc mints a ``magic_link``
as usual and records the sign-in under that link's ``jti`` in its own table
(``sign_ins``), then mails the link with an 8-character code. From then on:

- the waiting page binds the sign-in to the first browser that opens it (:func:`bind`);
  only a keyed hash of that browser's cookie is stored;
- the link opened in the binding browser completes it by the usual button
  (:func:`complete_by_press`); opened anywhere else it can only *approve* it, after the
  user typed the two-digit match number shown on the waiting page (:func:`approve`), or
  deny it (:func:`deny`); a wrong number denies it;
- the code typed on the waiting page completes it (:func:`try_code`); five wrong codes
  deny it;
- an approved sign-in is completed by the binding browser alone (:func:`complete_approved`).

Every way in spends the same ledger row: approval and completion by code or press each
move the link ``issued → consumed``, denial moves it to ``revoked``, each in the same
transaction as the sign-in's own state change, and each conditional on the state it
expects — whichever request commits first wins and every other finds the state changed.
A completion writes the one-time code (:mod:`linksvc.links.codes`) in that same transaction; the
code is derived from the link and the binding cookie, so a sign-in has one code at most.

The e-mail address never reaches this module: :func:`start` is handed a ``send``
callable that already knows where to send. Flask-free; ``now`` is always a parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.clients.registry import Client
from linksvc.i18n import locales
from linksvc.links import codes, ledger
from linksvc.links.service import LinkService, Minted
from linksvc.store import db
from linksvc.webhooks import outbox

log = logging.getLogger("linksvc.signins")

PENDING, COMPLETED, DENIED = "pending", "completed", "denied"
#: ``ended``: approved, then a revocation (of its link, subject, client or key) came before
#: the completion (linksvc.links.ledger.end_approved_sign_ins).
APPROVED, ENDED = ledger.SIGN_IN_APPROVED, ledger.SIGN_IN_ENDED
#: The history events (and metric labels) of a sign-in.
EVENTS = ("started", "viewed", "approved", "denied", "code_failed", "completed")
# Webhook event types of PRODUCT §7: ``sign_in.started`` …, written in the step's transaction.
outbox.EXTRA_EVENT_TYPES.extend(
    f"sign_in.{e}" for e in EVENTS if f"sign_in.{e}" not in outbox.EXTRA_EVENT_TYPES
)

#: Crockford's base32: no I, L, O or U, so nothing reads as something else.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
#: Wrong codes a sign-in survives; the next one ends it. 40 bits and five tries give an
#: attacker one chance in about 2·10¹¹ per sign-in, and the mint limits bound sign-ins.
MAX_CODE_FAILURES = 5
#: An approval that arrives just before the link expires can still be completed this long
#: after it by the binding browser (which polls every few seconds).
COMPLETE_GRACE = ledger.SIGN_IN_COMPLETE_GRACE
#: A second completion from the binding browser this soon gets the same code back (a
#: double click, the script and the button both submitting).
DOUBLE_SUBMIT_WINDOW = codes.DOUBLE_SUBMIT_WINDOW
#: The binding cookie's value: 256 random bits, base64url.
BINDING_RE = re.compile(r"[A-Za-z0-9_-]{43}")
SIGN_IN_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_USER_AGENT = 1024


class SignInError(Exception):
    """A sign-in step was refused; ``reason`` is a stable code."""

    def __init__(self, reason: str, signin: SignIn | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signin = signin


@dataclasses.dataclass(frozen=True)
class SignIn(locales.L10n):
    id: str
    jti: str
    client_id: str
    state: str
    state_at: int | None
    state_detail: str | None
    created_at: int
    exp: int
    browser: str
    match_number: int
    code_failures: int
    code_hash: str
    binding_hash: str | None
    #: From the link's row: its subject, state and the redirect URI registered at mint time.
    subject: str
    link_state: str
    redirect_uri: str | None
    #: From the link's row too: the language and time zone of its pages (PRODUCT §8).
    l10n: str | None = None

    def status(self, now: int) -> str:
        """What the waiting page shows: ``pending``, ``approved``, ``completed``, ``denied``,
        ``expired``, or ``ended`` (the link was revoked or superseded through the API, or
        a revocation ended the sign-in between its approval and its completion)."""
        if self.state in (COMPLETED, DENIED, ENDED):
            return self.state
        if self.state == APPROVED:
            return APPROVED if now <= self.exp + COMPLETE_GRACE else "expired"
        if self.link_state != ledger.ISSUED:
            return "ended"
        return "pending" if now <= self.exp else "expired"

    @property
    def remaining_codes(self) -> int:
        return max(0, MAX_CODE_FAILURES - self.code_failures)


@dataclasses.dataclass(frozen=True)
class Started:
    signin: SignIn
    minted: Minted


@dataclasses.dataclass(frozen=True)
class Completed:
    """A completion: the one-time code for the redirect URI (``None`` without one)."""

    signin: SignIn
    code: str | None
    repeated: bool


# -- keyed hashes and codes ------------------------------------------------------------


def _mac(secret: bytes, label: str, *parts: str) -> str:
    key = hmac.new(secret, f"linksvc.signins.{label}".encode(), hashlib.sha256).digest()
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def show_code(code: str) -> str:
    """The code as the mail shows it: two groups of four (``7KQ2-M9XD``)."""
    return f"{code[:4]}-{code[4:]}"


_CROCKFORD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def normalise_code(typed: str) -> str | None:
    """The code a user typed, as generated, or ``None`` when it cannot be one. Case, spaces
    and dashes do not matter; O, I and L read as 0, 1 and 1, as Crockford intends."""
    if len(typed) > 32:
        return None
    code = re.sub(r"[\s-]", "", typed).upper().translate(_CROCKFORD_ALIASES)
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


def code_hash(secret: bytes, jti: str, code: str) -> str:
    return _mac(secret, "code", jti, code)


def binding_hash(secret: bytes, signin_id: str, binding: str) -> str:
    """What ``sign_ins.binding_hash`` holds: keyed by the service secret and the sign-in, so
    a database dump gives no cookie, and one browser's hash differs from sign-in to sign-in."""
    return _mac(secret, "binding", signin_id, binding)


def form_token(secret: bytes, signin_id: str, binding: str) -> str:
    """The CSRF token of the waiting page's forms: only the binding browser can know it."""
    return _mac(secret, "form", signin_id, binding)[:43]


def is_bound_to(secret: bytes, signin: SignIn, binding: str | None) -> bool:
    if not binding or not BINDING_RE.fullmatch(binding) or signin.binding_hash is None:
        return False
    return hmac.compare_digest(signin.binding_hash, binding_hash(secret, signin.id, binding))


def actor(secret: bytes, ip: str) -> str:
    """The same keyed hash of an address that the pages write in a link's history."""
    return hmac.new(secret, b"actor|" + ip.encode(), hashlib.sha256).hexdigest()[:16]


# -- the requesting browser, in words ------------------------------------------------------

_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(e|A|iOS)?/")),
    ("Opera", re.compile(r"\bOPR/|\bOpera\b")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/")),
    ("Firefox", re.compile(r"\b(Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(Chrome|CriOS|Chromium)/")),
    ("Safari", re.compile(r"\bVersion/[\d.]+ .*Safari/|\bSafari/")),
)
_SYSTEMS = (
    ("iOS", re.compile(r"\b(iPhone|iPad|iPod)\b")),
    ("Android", re.compile(r"\bAndroid\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("Linux", re.compile(r"\bLinux\b|\bX11\b")),
)


def describe_browser(user_agent: str) -> str:
    """ "Firefox on Linux": what the approval page says of the requesting browser. Nothing
    more precise (no version, no location) — enough for a user to recognise their device."""
    name = next((n for n, rx in _BROWSERS if rx.search(user_agent)), None)
    system = next((n for n, rx in _SYSTEMS if rx.search(user_agent)), None)
    if name and system:
        return f"{name} on {system}"
    if name:
        return name
    if system:
        return f"a browser on {system}"
    return "an unknown browser"


def ago(seconds: int) -> str:
    """ "2 minutes ago"."""
    if seconds < 60:
        return "less than a minute ago"
    minutes = seconds // 60
    return "1 minute ago" if minutes == 1 else f"{minutes} minutes ago"


# -- reading -------------------------------------------------------------------------

_t, _l = db.sign_ins, db.links
_SELECT = sa.select(
    *_t.c,
    _l.c.subject,
    _l.c.state.label("link_state"),
    _l.c.redirect_uri,
    _l.c.l10n,
).join(_l, _l.c.jti == _t.c.jti)


def _signin(row: sa.RowMapping) -> SignIn:
    return SignIn(**{f.name: row[f.name] for f in dataclasses.fields(SignIn)})


def _get(conn: Connection, **where: str) -> SignIn | None:
    ((name, value),) = where.items()
    row = conn.execute(_SELECT.where(_t.c[name] == value)).mappings().first()
    return None if row is None else _signin(row)


def by_id(engine: Engine, signin_id: str) -> SignIn | None:
    if not SIGN_IN_ID_RE.fullmatch(signin_id):
        return None  # only the minted form reaches the database
    with db.read(engine) as conn:
        return _get(conn, id=signin_id)


def by_jti(engine: Engine, jti: str) -> SignIn | None:
    with db.read(engine) as conn:
        return _get(conn, jti=jti)


# -- the steps ----------------------------------------------------------------------------

Observer = Callable[[str, SignIn], None]


class SignIns:
    """The sign-in steps over the link service. ``observers`` are called as
    ``fn(event, signin)`` after each committed step (metrics, webhooks); cheap, never raising."""

    def __init__(self, service: LinkService) -> None:
        self.service = service
        self.observers: list[Observer] = []

    @property
    def engine(self) -> Engine:
        return self.service.engine

    @property
    def secret(self) -> bytes:
        secret = self.service.settings.secret_key
        if secret is None:
            raise errors.NotInitialised("LINKSVC_SECRET_KEY")
        return secret

    def address_key(self, address: str) -> str:
        """A keyed hash standing in for an address where a request must be recognised
        (idempotency): matchable by nobody without the service secret."""
        return _mac(self.secret, "address", address.strip().lower())

    def _emit(
        self,
        conn: Connection,
        signin: SignIn,
        event: str,
        now: int,
        facts: dict[str, Any] | None = None,
    ) -> None:
        """The webhook event of a step, in the step's transaction (clients with endpoints only)."""
        sink = self.service.sinks.get(self.engine, signin.client_id)
        if sink is not None:
            sink.emit(
                conn,
                event,
                jti=signin.jti,
                purpose="magic_link",
                subject=signin.subject,
                now=now,
                facts={"sign_in": signin.id, **(facts or {})},
            )

    def _notify(self, event: str, signin: SignIn) -> None:
        for fn in self.observers:
            fn(event, signin)
        log.info(
            "sign-in " + event,
            extra={
                "jti": signin.jti,
                "client": signin.client_id,
                "outcome": event,
                "sign_in": signin.id,
            },
        )

    def start(
        self,
        client: Client,
        *,
        subject: str,
        redirect_uri: str | None,
        ip: str,
        user_agent: str,
        send: Callable[[Minted, str], None],
        now: int,
        code_challenge: str | None = None,
        l10n: str | None = None,
    ) -> Started:
        """Mint the link, record the sign-in, then ``send(minted, shown_code)`` the mail.
        With ``code_challenge`` the code it ends in needs the matching verifier (linksvc.links.codes).

        The sign-in row is written after the link's own transaction and before anyone holds
        the token (it is not in the answer and not yet mailed): a link whose sign-in could
        not be recorded reaches nobody, so it can never be used as a plain magic link.
        """
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise errors.RequestRefused(
                "invalid_field", "ip must be an IPv4 or IPv6 address.", field="ip"
            ) from None
        if len(user_agent) > MAX_USER_AGENT:
            raise errors.RequestRefused(
                "invalid_field",
                f"user_agent must be at most {MAX_USER_AGENT} characters.",
                field="user_agent",
            )
        if "magic_link" in client.purposes and not client.redirect_uris:
            raise errors.RequestRefused(
                "redirect_uri_required",
                "A sign-in ends on a registered redirect URI; this client has none.",
                field="redirect_uri",
            )
        secret = self.secret
        minted = self.service.mint(
            client,
            purpose="magic_link",
            subject=subject,
            redirect_uri=redirect_uri,
            now=now,
            code_challenge=code_challenge,
            l10n=l10n,  # the language and zone of its pages and mail (linksvc.i18n.catalogs)
        )
        rec = minted.record
        code = new_code()
        values: dict[str, Any] = {
            "jti": rec.jti,
            "id": secrets.token_urlsafe(16),
            "client_id": client.id,
            "state": PENDING,
            "state_at": None,
            "state_detail": None,
            "created_at": now,
            "exp": rec.exp,
            "browser": describe_browser(user_agent)[:64],
            # Two digits, never 00-09: a number read aloud or typed keeps both its digits.
            "match_number": 10 + secrets.randbelow(90),
            "code_hash": code_hash(secret, rec.jti, code),
            "code_failures": 0,
            "binding_hash": None,
        }
        signin = SignIn(
            **values,
            subject=rec.subject,
            link_state=ledger.ISSUED,
            redirect_uri=rec.redirect_uri,
            l10n=rec.l10n,
        )
        with db.write(self.engine) as conn:
            conn.execute(sa.insert(_t).values(**values))
            ledger.add_event(conn, rec.jti, "started", now, via="api", actor=actor(secret, ip))
            self._emit(conn, signin, "sign_in.started", now, {"browser": signin.browser})
        self._notify("started", signin)
        send(minted, show_code(code))
        return Started(signin, minted)

    def viewed(self, signin: SignIn) -> None:
        """The link of ``signin`` was shown (the pages write the history event)."""
        self._notify("viewed", signin)

    def bind(self, signin: SignIn, binding: str, now: int) -> bool:
        """Bind a not yet bound sign-in to the browser holding ``binding``; True if this
        browser holds it now (it won, or had won before)."""
        if signin.binding_hash is not None:
            return is_bound_to(self.secret, signin, binding)
        h = binding_hash(self.secret, signin.id, binding)
        with db.write(self.engine) as conn:
            won = conn.execute(
                sa.update(_t)
                .where(_t.c.jti == signin.jti, _t.c.binding_hash.is_(None))
                .values(binding_hash=h)
            ).rowcount
            if won:
                ledger.add_event(conn, signin.jti, "viewed", now, via="wait")
                self._emit(conn, signin, "sign_in.viewed", now, {"via": "wait"})
        if won:
            self._notify("viewed", signin)
            return True
        # Two first views raced; the other browser won unless it was this one.
        again = by_jti(self.engine, signin.jti)
        return again is not None and is_bound_to(self.secret, again, binding)

    # Each step below is one transaction: the sign-in's conditional UPDATE decides, the
    # link's conditional UPDATE follows, and if the link has meanwhile left ``issued``
    # (revoked through the API) the whole step is rolled back.

    def _spend_link(self, conn: Connection, signin: SignIn, state: str, via: str, now: int) -> None:
        sink = self.service.sinks.get(self.engine, signin.client_id)
        if not ledger.settle(
            conn, signin.jti, state, now=now, via=via, sink=sink, facts={"sign_in": signin.id}
        ):
            raise _Ended()

    def _step(
        self,
        signin: SignIn,
        *,
        from_states: Collection[str],
        to_state: str,
        now: int,
        detail: str | None = None,
        binding: str | None = None,
        link_to: str | None = None,
        via: str,
        event: str,
        code: str | None = None,
        deadline: int | None = None,
    ) -> bool:
        cond = [_t.c.jti == signin.jti, _t.c.state.in_(list(from_states))]
        if deadline is not None:
            cond.append(_t.c.exp >= deadline)
        if binding is not None:
            cond.append(_t.c.binding_hash == binding_hash(self.secret, signin.id, binding))
        if via == "code":
            cond.append(_t.c.code_failures < MAX_CODE_FAILURES)
        try:
            with db.write(self.engine) as conn:
                won = conn.execute(
                    sa.update(_t)
                    .where(*cond)
                    .values(state=to_state, state_at=now, state_detail=detail)
                ).rowcount
                if won != 1:
                    return False
                if link_to is not None:
                    self._spend_link(conn, signin, link_to, via, now)
                ledger.add_event(conn, signin.jti, event, now, reason=detail, via=via)
                self._emit(conn, signin, "sign_in." + event, now, {"via": via, "reason": detail})
                if code is not None:
                    codes.insert(
                        conn,
                        codes.hash_code(code),
                        jti=signin.jti,
                        client_id=signin.client_id,
                        now=now,
                        ttl=self.service.settings.code_ttl,
                    )
        except _Ended:
            return False
        self._notify(event, signin)
        return True

    def _code_for(self, signin: SignIn, binding: str) -> str | None:
        if signin.redirect_uri is None:
            return None
        return codes.derive(self.secret, signin.jti, binding)

    def _after_lost_completion(self, signin: SignIn, binding: str, now: int) -> Completed:
        """A completion that changed nothing: the same browser's repeat, or refused."""
        current = by_jti(self.engine, signin.jti)
        if current is None:
            raise SignInError("unknown")
        if (
            current.state == COMPLETED
            and is_bound_to(self.secret, current, binding)
            and current.state_at is not None
            and abs(now - current.state_at) <= DOUBLE_SUBMIT_WINDOW
        ):
            return Completed(current, self._code_for(current, binding), repeated=True)
        raise SignInError(current.status(now), current)

    def complete_by_press(self, signin: SignIn, binding: str, now: int) -> Completed:
        """The button of the confirmation page, pressed in the binding browser."""
        if not is_bound_to(self.secret, signin, binding):
            raise SignInError("other_browser", signin)
        code = self._code_for(signin, binding)
        if self._complete_pending(signin, binding, now, via="page", code=code):
            return Completed(signin, code, repeated=False)
        return self._after_lost_completion(signin, binding, now)

    def _complete_pending(
        self, signin: SignIn, binding: str, now: int, *, via: str, code: str | None
    ) -> bool:
        """Pending → completed in this browser (the page's button or the typed code), its link
        consumed with it; False when another step got there first."""
        return self._step(
            signin,
            from_states=(PENDING,),
            to_state=COMPLETED,
            now=now,
            binding=binding,
            link_to=ledger.CONSUMED,
            via=via,
            event="completed",
            code=code,
            deadline=now,
        )

    def complete_approved(self, signin: SignIn, binding: str, now: int) -> Completed:
        """The waiting page, once the link approved the sign-in on another device."""
        if not is_bound_to(self.secret, signin, binding):
            raise SignInError("other_browser", signin)
        code = self._code_for(signin, binding)
        if self._step(
            signin,
            from_states=(APPROVED,),
            to_state=COMPLETED,
            now=now,
            binding=binding,
            via="wait",
            event="completed",
            code=code,
            deadline=now - COMPLETE_GRACE,
        ):
            return Completed(signin, code, repeated=False)
        return self._after_lost_completion(signin, binding, now)

    def try_code(self, signin: SignIn, binding: str, typed: str, now: int) -> Completed:
        """The code from the mail, typed on the waiting page. Raises :class:`SignInError`
        ``wrong_code`` (with the sign-in as it is now) or the state that refused it."""
        if not is_bound_to(self.secret, signin, binding):
            raise SignInError("other_browser", signin)
        status = signin.status(now)
        if status == APPROVED:
            return self.complete_approved(signin, binding, now)
        if status == COMPLETED:
            return self._after_lost_completion(signin, binding, now)
        if status != PENDING:
            raise SignInError(status, signin)
        code = normalise_code(typed)
        right = code is not None and hmac.compare_digest(
            signin.code_hash, code_hash(self.secret, signin.jti, code)
        )
        if right:
            one_time = self._code_for(signin, binding)
            if self._complete_pending(signin, binding, now, via="code", code=one_time):
                return Completed(signin, one_time, repeated=False)
            current = by_jti(self.engine, signin.jti)
            if current is not None and current.state == APPROVED:
                # The link approved it on the other device at the same instant: one completion.
                return self.complete_approved(current, binding, now)
            return self._after_lost_completion(signin, binding, now)
        return self._wrong_code(signin, now)

    def _wrong_code(self, signin: SignIn, now: int) -> Completed:
        """Count a wrong code; the last allowed one denies the sign-in and revokes its link in
        the same transaction, so no right code can slip in between."""
        last = _t.c.code_failures + 1 >= MAX_CODE_FAILURES
        denied = False
        try:
            with db.write(self.engine) as conn:
                failures = conn.execute(
                    sa.update(_t)
                    .where(
                        _t.c.jti == signin.jti,
                        _t.c.state == PENDING,
                        _t.c.code_failures < MAX_CODE_FAILURES,
                    )
                    .values(
                        code_failures=_t.c.code_failures + 1,
                        state=sa.case((last, DENIED), else_=_t.c.state),
                        state_at=sa.case((last, now), else_=_t.c.state_at),
                        state_detail=sa.case((last, "too_many_codes"), else_=_t.c.state_detail),
                    )
                    .returning(_t.c.code_failures)
                ).scalar()
                if failures is not None:
                    ledger.add_event(conn, signin.jti, "code_failed", now, via="code")
                    self._emit(conn, signin, "sign_in.code_failed", now, {"failures": failures})
                    if failures >= MAX_CODE_FAILURES:
                        self._spend_link(conn, signin, ledger.REVOKED, "sign_in", now)
                        ledger.add_event(
                            conn, signin.jti, DENIED, now, reason="too_many_codes", via="sign_in"
                        )
                        self._emit(
                            conn,
                            signin,
                            "sign_in.denied",
                            now,
                            {"via": "sign_in", "reason": "too_many_codes"},
                        )
                        denied = True
        except _Ended:
            # The link was revoked through the API meanwhile: nothing counted, the sign-in ended.
            failures = None
        current = by_jti(self.engine, signin.jti)
        if current is None:
            raise SignInError("unknown")
        if failures is None:
            raise SignInError(current.status(now), current)
        self._notify("code_failed", current)
        if denied:
            self._notify("denied", current)
            raise SignInError("denied", current)
        raise SignInError("wrong_code", current)

    def approve(self, signin: SignIn, number: int, now: int) -> str:
        """The approval page on another device: the right match number approves
        (``approved``), a wrong one denies (``denied``). Raises :class:`SignInError` with
        the state when the sign-in is no longer pending."""
        if not hmac.compare_digest(str(number).encode(), str(signin.match_number).encode()):
            if self.deny(signin, now, detail="wrong_number"):
                return DENIED
        elif self._step(
            signin,
            from_states=(PENDING,),
            to_state=APPROVED,
            now=now,
            link_to=ledger.CONSUMED,
            via="approve",
            event="approved",
            deadline=now,
        ):
            return APPROVED
        current = by_jti(self.engine, signin.jti) or signin
        raise SignInError(current.status(now), current)

    def deny(self, signin: SignIn, now: int, *, detail: str = "denied") -> bool:
        """End a pending sign-in and revoke its link; False if it was no longer pending."""
        return self._step(
            signin,
            from_states=(PENDING,),
            to_state=DENIED,
            now=now,
            detail=detail,
            link_to=ledger.REVOKED,
            via="sign_in",
            event="denied",
        )


def purge(engine: Engine, *, now: int, retention_seconds: int, batch_size: int = 1000) -> int:
    """Delete sign-ins whose link expired more than ``retention_seconds`` ago — the links'
    own retention (:func:`linksvc.links.ledger.purge`), so a sign-in goes with its link. In
    transactions of at most ``batch_size`` rows. Returns how many were removed."""
    if retention_seconds < ledger.MIN_RETENTION_SECONDS:
        raise ValueError(f"retention must be at least {ledger.MIN_RETENTION_SECONDS} seconds")
    cutoff = now - retention_seconds

    def batch(conn: Connection) -> int | None:
        jtis = conn.execute(sa.select(_t.c.jti).where(_t.c.exp < cutoff).limit(batch_size))
        found = [r[0] for r in jtis]
        if not found:
            return None
        return conn.execute(sa.delete(_t).where(_t.c.jti.in_(found), _t.c.exp < cutoff)).rowcount

    return db.in_batches(engine, batch)[0]


class _Ended(Exception):
    """The link left ``issued`` under a sign-in step: roll the step back."""
