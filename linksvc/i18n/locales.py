"""Locales and time zones as callers name them (PRODUCT §8), without Flask.

Callers speak BCP 47 (``pt-BR``, ``zh-Hans``); the catalogs (linksvc/i18n/translations) are named
as gettext names them (``pt_BR``, ``zh_Hans``). :func:`parse_tag` refuses a malformed tag;
:func:`resolve` maps a well-formed one to a shipped locale or ``None`` (``de-AT`` → ``de``,
``pt`` → ``pt_BR``, ``zh-CN`` → ``zh_Hans``): nothing here fails on a well-formed tag.
:mod:`linksvc.i18n.catalogs` renders with them.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Any

from babel import Locale

from linksvc import errors

#: The shipped locales, as catalog directory names; English is the source language.
LOCALES: tuple[str, ...] = (
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt_BR",
    "nl",
    "pl",
    "tr",
    "ja",
    "zh_Hans",
    "ar",
)
DEFAULT = "en"

#: Where a language has one shipped variant, every tag of that language gets it.
_BY_LANGUAGE: dict[str, str] = {loc.split("_")[0].lower(): loc for loc in LOCALES}

# RFC 5646 ``langtag`` (the grandfathered tags aside): language, extlang, script, region,
# variants, extensions, private use. Case-insensitive; at most 35 characters, the length
# RFC 5646 §4.4.1 asks implementations to keep.
_LANGTAG = re.compile(
    r"""
    (?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})
    (?:-(?P<script>[a-z]{4}))?
    (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
    (?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*
    (?:-[0-9a-wy-z](?:-[a-z0-9]{2,8})+)*
    (?:-x(?:-[a-z0-9]{1,8})+)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
MAX_TAG = 35
#: The same grammar for the OpenAPI document (ECMA-262 regex, no flags).
LANGTAG_PATTERN = (
    "^(?:(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4,8})(?:-[A-Za-z]{4})?"
    "(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
    "(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*(?:-[xX](?:-[A-Za-z0-9]{1,8})+)?"
    "|[xX](?:-[A-Za-z0-9]{1,8})+)$"
)
_PRIVATE_USE = re.compile(r"x(?:-[a-z0-9]{1,8})+", re.IGNORECASE)


# -- tags ----------------------------------------------------------------------------------


def parse_tag(tag: str) -> re.Match[str]:
    """The parts of a well-formed BCP 47 tag; ``ValueError`` for anything else (``pt_BR``
    included: BCP 47 separates with ``-``)."""
    m = _LANGTAG.fullmatch(tag) if isinstance(tag, str) and len(tag) <= MAX_TAG else None
    if m is None:
        raise ValueError(tag)
    return m


def resolve(tag: str) -> str | None:
    """The shipped locale (a catalog directory name) for a well-formed tag, or ``None`` when
    linksvc has nothing in its language. ``ValueError`` for a malformed tag."""
    if isinstance(tag, str) and len(tag) <= MAX_TAG and _PRIVATE_USE.fullmatch(tag):
        return None  # "x-…": well-formed, and says no language at all
    m = parse_tag(tag)
    language = m["language"].split("-")[0].lower()
    if language == "pt":
        return "pt_BR"  # the one Portuguese shipped; pt-PT readers read it too
    if language == "zh":
        return "zh_Hans"
    return _BY_LANGUAGE.get(language)


def to_bcp47(locale: str) -> str:
    """``pt_BR`` → ``pt-BR``, ``zh_Hans`` → ``zh-Hans``: how the API shows a locale."""
    return locale.replace("_", "-")


def from_bcp47(tag: str | None) -> str | None:
    """A stored (BCP 47, shipped) tag back to its catalog name; ``None`` for anything else."""
    if not tag:
        return None
    name = tag.replace("-", "_")
    return name if name in SHIPPED else None


SHIPPED = frozenset(LOCALES)


def negotiate(header: str | None) -> str | None:
    """The best shipped locale for an ``Accept-Language`` header (RFC 9110 §12.5.4: q-values,
    ties in the order given), or ``None``. Malformed members are skipped; a malformed or
    absurdly long header counts as absent."""
    if not header or len(header) > 2048:
        return None
    ranked: list[tuple[float, int, str]] = []
    for i, member in enumerate(header.split(",")[:32]):
        tag, _, params = member.strip().partition(";")
        tag, q = tag.strip(), 1.0
        if params:
            name, _, value = params.strip().partition("=")
            if name.strip().lower() != "q" or not re.fullmatch(
                r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", value.strip()
            ):
                continue
            q = float(value)
        if q <= 0 or tag == "*":
            continue
        try:
            found = resolve(tag)
        except ValueError:
            continue
        if found is not None:
            ranked.append((-q, i, found))
    return min(ranked)[2] if ranked else None


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezones() -> list[str]:
    """Every IANA zone name accepted, sorted (the OpenAPI document lists them)."""
    return sorted(_zones())


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA zone we know; ``ValueError`` otherwise. Only names from the
    zone list count (never a file path, however ``zoneinfo`` would read it)."""
    if not isinstance(name, str) or len(name) > 64 or name not in _zones():
        raise ValueError(name)
    return name


def link_l10n(locale: Any, timezone: Any, client_locale: str | None) -> str | None:
    """What a link's ledger row keeps of a mint's ``locale`` and ``timezone`` (the
    ``"<locale>|<zone>"`` of :attr:`linksvc.links.ledger.LinkRecord.l10n`), or ``None`` when
    neither was given. A malformed tag or an unknown zone is refused (``422
    invalid_field``); a well-formed tag linksvc does not ship falls back to its language,
    else the client's default, else English — never an error."""
    if locale is None and timezone is None:
        return None
    shipped = ""
    if locale is not None:
        try:
            found = resolve(locale)
        except ValueError:
            raise errors.RequestRefused(
                "invalid_field",
                "locale must be a BCP 47 language tag, such as de, pt-BR or zh-Hans.",
                field="locale",
            ) from None
        shipped = to_bcp47(found or from_bcp47(client_locale) or DEFAULT)
    if timezone is not None:
        try:
            check_timezone(timezone)
        except ValueError:
            raise errors.RequestRefused(
                "invalid_field",
                "timezone must be an IANA time zone name, such as Europe/Berlin.",
                field="timezone",
            ) from None
    return f"{shipped}|{timezone or ''}"


class L10n:
    """``locale`` and ``timezone`` of a record whose ``l10n`` holds ``link_l10n``'s
    ``"<locale>|<zone>"`` (a ledger record, a sign-in): mixed into their dataclasses."""

    l10n: str | None

    @property
    def locale(self) -> str | None:
        """The link's BCP 47 locale (a shipped one), if it was minted with one."""
        return (self.l10n or "").partition("|")[0] or None

    @property
    def timezone(self) -> str | None:
        """The link's IANA time zone, if it was minted with one."""
        return (self.l10n or "").partition("|")[2] or None


def direction(locale: str) -> str:
    """``rtl`` or ``ltr``, from CLDR's character order for the locale."""
    return "rtl" if locale_data(locale).character_order == "right-to-left" else "ltr"


@functools.cache
def locale_data(locale: str) -> Locale:
    return Locale.parse(locale)
