"""``LinkClient`` (sync) and ``AsyncLinkClient`` (asyncio): one method per API call.

Both send the API key as a bearer token, an ``X-Request-Id`` shared by a call's retries,
and an ``Idempotency-Key`` on every mint and sign-in (so a retried mint never mints
twice). They retry what is safe to retry (see :class:`RetryPolicy`) and raise a
:class:`~linksvc_client.errors.LinksvcError` subclass for everything else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from . import _core, errors
from ._core import RetryPolicy
from .models import (
    Branding,
    ExchangedCode,
    LinkPage,
    LinkStatus,
    LinkSummary,
    MintedLink,
    RedeemedLink,
    Revoked,
    SignIn,
    VerifiedLink,
)

T = TypeVar("T")


def _headers(api_key: str, user_agent: str | None) -> dict[str, str]:
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be the client's API key (lsk_…)")
    return {
        "Authorization": f"Bearer {api_key.strip()}",
        "Accept": "application/json",
        "User-Agent": user_agent or _core.USER_AGENT,
    }


class LinkClient:
    """The linksvc API, synchronously::

        client = LinkClient("https://links.internal", api_key)
        link = client.mint("magic_link", "user-42")
        send_mail(to=address, body=link.url)

    ``timeout`` bounds one try; ``retry`` the retries and the whole call. ``http`` lets
    you bring your own ``httpx.Client`` (proxies, TLS settings); it is then yours to close.
    ``sleep``, ``clock`` and ``rng`` are for tests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        user_agent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._headers = _headers(api_key, user_agent)
        self._binding_secret = _core.binding_secret(api_key.strip())
        self._own_http = http is None
        self._http = http or httpx.Client(follow_redirects=False)
        self._sleep, self._clock, self._rng = sleep, clock, rng

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> LinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the key
        return f"LinkClient({self.base_url!r})"

    # -- the calls ------------------------------------------------------------------------

    def mint(
        self,
        purpose: str,
        subject: str,
        *,
        ttl: int | None = None,
        redirect_uri: str | None = None,
        download: Mapping[str, Any] | None = None,
        data: Any = None,
        email: str | None = None,
        confirm: bool | None = None,
        idempotency_key: str | None = None,
        code_verifier: str | None = None,
        bind: bool = True,
        locale: str | None = None,
        timezone: str | None = None,
    ) -> MintedLink:
        """Mint a link for ``subject`` (your opaque user id). With ``email``, linksvc mails
        it. An Idempotency-Key is sent (a fresh UUID unless you give one): retries, and
        any repeat with the same key and arguments within 24 h, answer the same link.

        A sign-in or reset link is bound to the browser that asked (its one-time code is
        exchanged only with the verifier): to ``code_verifier`` — the one you keep in that
        browser's session — or else to a new one, returned as ``link.code_verifier`` for
        you to keep there. ``bind=False`` mints an unbound link, for a flow no browser
        started (a link sent by a batch job); its code then works in any browser.

        ``locale`` (BCP 47: "de", "pt-BR") and ``timezone`` (IANA: "Europe/Berlin") choose
        the language and time zone of the link's pages and mail."""
        return self._run(
            _core.mint(
                purpose,
                subject,
                ttl=ttl,
                redirect_uri=redirect_uri,
                download=download,
                data=data,
                email=email,
                confirm=confirm,
                idempotency_key=idempotency_key,
                code_verifier=_core.binding(
                    purpose,
                    bind=bind,
                    code_verifier=code_verifier,
                    idempotency_key=idempotency_key,
                    secret=self._binding_secret,
                ),
                locale=locale,
                timezone=timezone,
            )
        )

    def verify(self, token: str, purpose: str) -> VerifiedLink:
        """Check a token for ``purpose`` without consuming it."""
        return self._run(_core.verify(token, purpose))

    def redeem(self, token: str, purpose: str) -> RedeemedLink:
        """Consume a token, once. Raises :class:`LinkUsed` for every later try, and
        :class:`OutcomeUnknown` (never a retry) when the answer was lost on the way."""
        return self._run(_core.redeem(token, purpose))

    def status(self, jti: str) -> LinkStatus:
        """A link's state and history."""
        return self._run(_core.status(jti))

    def revoke(self, jti: str) -> Revoked:
        """Revoke one outstanding link (raises :class:`LinkUsed` if it was consumed)."""
        return self._run(_core.revoke(jti))

    def revoke_subject(self, subject: str, purposes: Sequence[str] | None = None) -> int:
        """Revoke every outstanding link of ``subject`` (of ``purposes`` only, if given);
        returns how many. Sign-out-everywhere, account suspension."""
        return self._run(_core.revoke_subject(subject, purposes))

    def links_of(
        self,
        subject: str,
        *,
        state: str | Sequence[str] | None = None,
        purpose: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> LinkPage:
        """One page of ``subject``'s links, newest first; pass ``next_cursor`` on."""
        return self._run(
            _core.links_of(subject, state=state, purpose=purpose, limit=limit, cursor=cursor)
        )

    def iter_links_of(
        self,
        subject: str,
        *,
        state: str | Sequence[str] | None = None,
        purpose: str | Sequence[str] | None = None,
        page_size: int = 100,
    ) -> Iterator[LinkSummary]:
        """Every one of ``subject``'s links, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.links_of(
                subject, state=state, purpose=purpose, limit=page_size, cursor=cursor
            )
            yield from page.links
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def exchange_code(self, code: str, code_verifier: str | None = None) -> ExchangedCode:
        """Exchange the one-time ``code`` your callback received, once, with the
        ``code_verifier`` kept in the session of the browser the code came back to (None
        only for an unbound flow). A code that browser did not start raises
        :class:`CodeNotForThisBrowser` and is spent. Single use, like :meth:`redeem`: never
        retried once it may have reached linksvc."""
        return self._run(_core.exchange_code(code, code_verifier))

    def sign_in(
        self,
        subject: str,
        email: str,
        *,
        ip: str,
        user_agent: str,
        redirect_uri: str | None = None,
        idempotency_key: str | None = None,
        code_verifier: str | None = None,
        bind: bool = True,
        locale: str | None = None,
        timezone: str | None = None,
    ) -> SignIn:
        """Start a sign-in that completes in the browser that asked (PRODUCT §6): linksvc
        mails the link and a code; send that browser to the answer's ``wait_url``. Its
        one-time code is bound to ``code_verifier`` (or a new one, returned as
        ``code_verifier`` on the answer), as :meth:`mint` binds a sign-in link; ``bind=False``
        starts it unbound. ``locale`` and ``timezone``: the language and time zone of its
        pages and mail (the browser's Accept-Language best match is a good ``locale``)."""
        return self._run(
            _core.sign_in(
                subject,
                email,
                ip=ip,
                user_agent=user_agent,
                redirect_uri=redirect_uri,
                idempotency_key=idempotency_key,
                code_verifier=_core.binding(
                    "magic_link",
                    bind=bind,
                    code_verifier=code_verifier,
                    idempotency_key=idempotency_key,
                    secret=self._binding_secret,
                ),
                locale=locale,
                timezone=timezone,
            )
        )

    def get_branding(self) -> Branding:
        """This client's face on its pages and mails."""
        return self._run(_core.get_branding())

    def set_branding(
        self,
        *,
        display_name: Any = _core.KEEP,
        brand_color: Any = _core.KEEP,
        support_url: Any = _core.KEEP,
        support_email: Any = _core.KEEP,
        mail_from_name: Any = _core.KEEP,
    ) -> Branding:
        """Set the fields given (``None`` clears one, not ``display_name``); the others stay.
        A brand colour whose button text cannot reach 4.5:1 raises :class:`InvalidRequest`
        (``brand_color_low_contrast``)."""
        return self._run(
            _core.put_branding(
                display_name=display_name,
                brand_color=brand_color,
                support_url=support_url,
                support_email=support_email,
                mail_from_name=mail_from_name,
            )
        )

    def set_logo(self, data: bytes, content_type: str = "image/png") -> Branding:
        """Upload the logo (PNG, JPEG or WebP, at most 256 KiB); linksvc re-encodes it."""
        return self._run(_core.put_logo(data, content_type))

    def delete_logo(self) -> Branding:
        return self._run(_core.delete_logo())

    # -- the loop ---------------------------------------------------------------------------

    def _run(self, op: _core.Op[T]) -> T:
        request_id = _core.new_request_id()
        retrier = _core.Retrier(self.retry, self.timeout, self._clock, self._rng)
        while True:
            timeout = retrier.next_timeout()
            try:
                resp = self._http.request(
                    op.method,
                    self.base_url + op.path,
                    json=op.json,
                    content=op.content,
                    params=op.params,
                    headers={**self._headers, **op.headers, "X-Request-Id": request_id},
                    timeout=timeout,
                )
            except httpx.TransportError as exc:
                error: errors.LinksvcError = _core.connection_error(op, exc, request_id)
            else:
                try:
                    return _core.answer(op, resp, request_id)
                except errors.LinksvcError as exc:
                    error = exc
            wait = retrier.wait_before_retry(error)
            if wait is None:
                raise error
            self._sleep(wait)


class AsyncLinkClient:
    """The linksvc API for asyncio, with the same methods as :class:`LinkClient`::

    async with AsyncLinkClient(url, api_key) as client:
        link = await client.mint("magic_link", "user-42")
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
        user_agent: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._headers = _headers(api_key, user_agent)
        self._binding_secret = _core.binding_secret(api_key.strip())
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._sleep, self._clock, self._rng = sleep, clock, rng

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncLinkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncLinkClient({self.base_url!r})"

    async def mint(
        self,
        purpose: str,
        subject: str,
        *,
        ttl: int | None = None,
        redirect_uri: str | None = None,
        download: Mapping[str, Any] | None = None,
        data: Any = None,
        email: str | None = None,
        confirm: bool | None = None,
        idempotency_key: str | None = None,
        code_verifier: str | None = None,
        bind: bool = True,
        locale: str | None = None,
        timezone: str | None = None,
    ) -> MintedLink:
        """See :meth:`LinkClient.mint`."""
        return await self._run(
            _core.mint(
                purpose,
                subject,
                ttl=ttl,
                redirect_uri=redirect_uri,
                download=download,
                data=data,
                email=email,
                confirm=confirm,
                idempotency_key=idempotency_key,
                code_verifier=_core.binding(
                    purpose,
                    bind=bind,
                    code_verifier=code_verifier,
                    idempotency_key=idempotency_key,
                    secret=self._binding_secret,
                ),
                locale=locale,
                timezone=timezone,
            )
        )

    async def verify(self, token: str, purpose: str) -> VerifiedLink:
        return await self._run(_core.verify(token, purpose))

    async def redeem(self, token: str, purpose: str) -> RedeemedLink:
        """See :meth:`LinkClient.redeem`: never retried once it may have been sent."""
        return await self._run(_core.redeem(token, purpose))

    async def status(self, jti: str) -> LinkStatus:
        return await self._run(_core.status(jti))

    async def revoke(self, jti: str) -> Revoked:
        return await self._run(_core.revoke(jti))

    async def revoke_subject(self, subject: str, purposes: Sequence[str] | None = None) -> int:
        return await self._run(_core.revoke_subject(subject, purposes))

    async def links_of(
        self,
        subject: str,
        *,
        state: str | Sequence[str] | None = None,
        purpose: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> LinkPage:
        return await self._run(
            _core.links_of(subject, state=state, purpose=purpose, limit=limit, cursor=cursor)
        )

    async def iter_links_of(
        self,
        subject: str,
        *,
        state: str | Sequence[str] | None = None,
        purpose: str | Sequence[str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[LinkSummary]:
        cursor: str | None = None
        while True:
            page = await self.links_of(
                subject, state=state, purpose=purpose, limit=page_size, cursor=cursor
            )
            for link in page.links:
                yield link
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def exchange_code(self, code: str, code_verifier: str | None = None) -> ExchangedCode:
        """See :meth:`LinkClient.exchange_code`."""
        return await self._run(_core.exchange_code(code, code_verifier))

    async def sign_in(
        self,
        subject: str,
        email: str,
        *,
        ip: str,
        user_agent: str,
        redirect_uri: str | None = None,
        idempotency_key: str | None = None,
        code_verifier: str | None = None,
        bind: bool = True,
        locale: str | None = None,
        timezone: str | None = None,
    ) -> SignIn:
        return await self._run(
            _core.sign_in(
                subject,
                email,
                ip=ip,
                user_agent=user_agent,
                redirect_uri=redirect_uri,
                idempotency_key=idempotency_key,
                code_verifier=_core.binding(
                    "magic_link",
                    bind=bind,
                    code_verifier=code_verifier,
                    idempotency_key=idempotency_key,
                    secret=self._binding_secret,
                ),
                locale=locale,
                timezone=timezone,
            )
        )

    async def get_branding(self) -> Branding:
        """This client's face on its pages and mails."""
        return await self._run(_core.get_branding())

    async def set_branding(
        self,
        *,
        display_name: Any = _core.KEEP,
        brand_color: Any = _core.KEEP,
        support_url: Any = _core.KEEP,
        support_email: Any = _core.KEEP,
        mail_from_name: Any = _core.KEEP,
    ) -> Branding:
        """Set the fields given (``None`` clears one, not ``display_name``); the others stay.
        A brand colour whose button text cannot reach 4.5:1 raises :class:`InvalidRequest`
        (``brand_color_low_contrast``)."""
        return await self._run(
            _core.put_branding(
                display_name=display_name,
                brand_color=brand_color,
                support_url=support_url,
                support_email=support_email,
                mail_from_name=mail_from_name,
            )
        )

    async def set_logo(self, data: bytes, content_type: str = "image/png") -> Branding:
        """Upload the logo (PNG, JPEG or WebP, at most 256 KiB); linksvc re-encodes it."""
        return await self._run(_core.put_logo(data, content_type))

    async def delete_logo(self) -> Branding:
        return await self._run(_core.delete_logo())

    async def _run(self, op: _core.Op[T]) -> T:
        request_id = _core.new_request_id()
        retrier = _core.Retrier(self.retry, self.timeout, self._clock, self._rng)
        while True:
            timeout = retrier.next_timeout()
            try:
                resp = await self._http.request(
                    op.method,
                    self.base_url + op.path,
                    json=op.json,
                    content=op.content,
                    params=op.params,
                    headers={**self._headers, **op.headers, "X-Request-Id": request_id},
                    timeout=timeout,
                )
            except httpx.TransportError as exc:
                error: errors.LinksvcError = _core.connection_error(op, exc, request_id)
            else:
                try:
                    return _core.answer(op, resp, request_id)
                except errors.LinksvcError as exc:
                    error = exc
            wait = retrier.wait_before_retry(error)
            if wait is None:
                raise error
            await self._sleep(wait)
