"""Does a fetch of a confirmation page look like a mail scanner or a prefetcher?

Mail security gateways, chat link previews and browsers' speculative loads open links before
(or instead of) the person they were sent to. Nothing they do consumes a link (a GET only
shows the page), but an application watching ``link.viewed`` wants to tell them apart from
a person. The signals, each cheap and none conclusive alone:

- ``head``: a HEAD request (a person's browser GETs);
- ``no_cookie_on_refetch``: the page was shown before and this request carries no cookie,
  so it is not the browser that saw it (which got a cookie then);
- ``known_agent``: a User-Agent of a known scanner, preview fetcher or HTTP library;
- ``no_user_agent``: no User-Agent at all;
- ``prefetch``: the browser says it is prefetching (``Purpose`` / ``Sec-Purpose: prefetch``,
  ``X-Moz: prefetch``, ``X-Purpose: preview``).

This module knows nothing of Flask.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Lower-case substrings of User-Agents that fetch links for someone else.
KNOWN_AGENTS = (
    "bot",
    "crawler",
    "spider",
    "preview",
    "facebookexternalhit",
    "whatsapp",
    "telegram",
    "discord",
    "slack",
    "skypeuripreview",
    "microsoft office",
    "ms-office",
    "safelinks",
    "proofpoint",
    "mimecast",
    "barracuda",
    "symantec",
    "trendmicro",
    "fortiguard",
    "headlesschrome",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "curl/",
    "wget/",
    "okhttp",
)


def signals(
    *, method: str, headers: Mapping[str, str], has_cookie: bool, earlier_views: int
) -> list[str]:
    """The scanner signals of one fetch (empty: it looks like a person)."""
    found = []
    if method.upper() == "HEAD":
        found.append("head")
    if earlier_views > 0 and not has_cookie:
        found.append("no_cookie_on_refetch")
    agent = (headers.get("User-Agent") or "").lower()
    if not agent:
        found.append("no_user_agent")
    elif any(k in agent for k in KNOWN_AGENTS):
        found.append("known_agent")
    purpose = " ".join(
        (headers.get(h) or "").lower() for h in ("Purpose", "Sec-Purpose", "X-Moz", "X-Purpose")
    )
    if "prefetch" in purpose or "preview" in purpose:
        found.append("prefetch")
    return found
