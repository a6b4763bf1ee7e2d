"""What end users read, in their language and time (PRODUCT §8): locales, catalogs, formats.

- **Tags** are parsed and resolved to a shipped locale in :mod:`linksvc.i18n.locales`.
- **Catalogs** are loaded once, at start-up (:class:`Catalogs`): the compiled ``.mo`` beside
  each ``.po`` (``make i18n`` / ``make venv`` compile them), or the ``.po`` itself when the
  ``.mo`` is missing or older, so a catalog just dropped in is never shown stale.
- **The current locale** of a request lives in ``flask.g``: a page sets it from its link
  (:func:`use`), otherwise the first translation negotiates it from ``Accept-Language``; a
  mail renders inside :func:`using`. Outside a request it is English.
- **Times** are formatted by Babel (CLDR): in the link's IANA zone with the zone's
  abbreviation, or as a relative phrase ("in 5 minutes") with the UTC time.

The API's own messages stay in English: only end-user pages and mails call :func:`gettext`.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from gettext import NullTranslations
from pathlib import Path
from typing import Any

from babel.dates import format_date, format_datetime, format_time, format_timedelta
from babel.dates import get_datetime_format as _datetime_pattern
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from flask import Flask, g, has_app_context, has_request_context, request
from jinja2 import pass_context
from markupsafe import Markup

from linksvc.i18n.locales import (
    DEFAULT,
    LOCALES,
    SHIPPED,
    check_timezone,
    direction,
    from_bcp47,
    locale_data,
    negotiate,
    to_bcp47,
)
from linksvc.services import services

log = logging.getLogger("linksvc.i18n")
TRANSLATIONS = Path(__file__).parent / "translations"


def N_(message: str) -> str:
    """Mark a message for extraction where it is defined; :func:`gettext` translates it where
    it is shown (module-level copy is read at start-up, before any locale is known)."""
    return message


# -- catalogs ------------------------------------------------------------------------------


class Catalogs:
    """Every shipped locale's translations, loaded once. A locale without a catalog (or with
    an empty one) reads the English source text: never a missing page."""

    def __init__(self, directory: Path = TRANSLATIONS) -> None:
        self.translations: dict[str, NullTranslations] = {}
        for loc in LOCALES:
            self.translations[loc] = t = self._load(directory, loc)
            _drop_unsafe(t, loc)

    @staticmethod
    def _load(directory: Path, locale: str) -> NullTranslations:
        po = directory / locale / "LC_MESSAGES" / "messages.po"
        mo = po.with_suffix(".mo")
        if not po.exists():
            return NullTranslations()
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            with mo.open("rb") as fh:
                return Translations(fh)
        # No compiled catalog yet (a fresh clone before `make`), or a .po newer than its .mo.
        log.info("catalog compiled in memory", extra={"locale": locale})
        with po.open("rb") as fh:
            catalog = read_po(fh, locale=locale)
        buf = io.BytesIO()
        write_mo(buf, catalog)
        buf.seek(0)
        return Translations(buf)

    def get(self, locale: str) -> NullTranslations:
        return self.translations.get(locale) or self.translations[DEFAULT]


_PLACEHOLDER = re.compile(r"%\((\w+)\)")


def _drop_unsafe(translations: NullTranslations, locale: str) -> None:
    """Forget any translation that could not be formatted with its English message's
    placeholders (a stray "%", a misspelt name), or that carries markup (the templates treat
    a translation as HTML-safe): that message shows in English rather than a page answering
    500 or showing a stranger's HTML. `make lint` refuses such a catalog; this guards a
    deployed one."""
    messages: dict[Any, str] = getattr(translations, "_catalog", {})
    for key, text in list(messages.items()):
        msgid = key[0] if isinstance(key, tuple) else key
        if not msgid:
            continue  # the header
        allowed = set(_PLACEHOLDER.findall(msgid)) | ({"num"} if isinstance(key, tuple) else set())
        try:
            unknown = set(_PLACEHOLDER.findall(text)) - allowed
            _ = text % defaultdict(lambda: 1)  # formats, or raises
        except (ValueError, TypeError, KeyError):
            unknown = {"?"}
        if ("<" in text or ">" in text) and not ("<" in msgid or ">" in msgid):
            unknown.add("<markup>")
        if unknown:
            log.warning(
                "translation dropped: it does not format", extra={"locale": locale, "msgid": msgid}
            )
            del messages[key]


_FALLBACK = NullTranslations()


def _translations() -> NullTranslations:
    if not has_app_context():
        return _FALLBACK
    return services().catalogs.get(current())


# -- the current locale ----------------------------------------------------------------------


def current() -> str:
    """This request's locale: set by :func:`use`/:func:`using`, else negotiated from the
    request's ``Accept-Language`` (once per request), else English."""
    if not has_app_context():
        return DEFAULT
    loc: str | None = g.get("linksvc_locale")
    if loc is None:
        loc = DEFAULT
        if has_request_context():
            loc = negotiate(request.headers.get("Accept-Language")) or DEFAULT
        g.linksvc_locale = loc
    return loc


def use(*candidates: str | None) -> str:
    """Make the first shipped candidate (a stored BCP 47 tag or a catalog name) this
    request's locale; with none, the browser's ``Accept-Language`` decides."""
    for cand in candidates:
        loc = from_bcp47(cand)
        if loc is not None:
            g.linksvc_locale = loc
            return loc
    g.pop("linksvc_locale", None)
    return current()


@contextmanager
def using(locale: str) -> Iterator[str]:
    """Render in ``locale`` (a catalog name) for the block: a mail in its link's language,
    inside a request whose own language may be another."""
    before = g.get("linksvc_locale")
    g.linksvc_locale = locale if locale in SHIPPED else DEFAULT
    try:
        yield g.linksvc_locale
    finally:
        if before is None:
            g.pop("linksvc_locale", None)
        else:
            g.linksvc_locale = before


#: First Strong Isolate and Pop Directional Isolate (Unicode UAX #9): on a right-to-left
#: page a placeholder's value (a Latin name, a time, a host) keeps its own direction and
#: does not drag the sentence's punctuation with it.
_FSI, _PDI = "\u2068", "\u2069"


def _isolated(variables: dict[str, Any]) -> dict[str, Any]:
    if direction(current()) != "rtl":
        return variables
    return {k: _FSI + v + _PDI if isinstance(v, str) else v for k, v in variables.items()}


def gettext(message: str, **variables: Any) -> str:
    """``message`` in the current locale, with ``%(name)s`` placeholders filled."""
    # Always formatted, as the templates' _() is: a literal percent sign is "%%" in every
    # message, whichever side shows it.
    return _translations().gettext(message) % _isolated(variables)


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    """The plural form for ``n`` by the locale's own rules; ``%(num)d`` is ``n``."""
    return _translations().ngettext(singular, plural, n) % {"num": n, **_isolated(variables)}


@pass_context
def _template_gettext(context: Any, message: str, **variables: Any) -> str:
    # Jinja's new-style gettext, plus the isolation: autoescaped (the translation is trusted
    # markup, the values are escaped), placeholders from keyword arguments.
    text = _translations().gettext(message)
    if context.eval_ctx.autoescape:
        text = Markup(text)
    return text % _isolated(variables)


@pass_context
def _template_ngettext(context: Any, singular: str, plural: str, n: int, **variables: Any) -> str:
    text = _translations().ngettext(singular, plural, n)
    if context.eval_ctx.autoescape:
        text = Markup(text)
    return text % {"num": n, **_isolated(variables)}


# -- times ---------------------------------------------------------------------------------


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _zone_name(when: dt.datetime, zone: zoneinfo.ZoneInfo, locale: str) -> str:
    """The zone's abbreviation as the locale writes it ("MEZ", "JST"), else the IANA one
    ("CET"), else the offset ("GMT+03:00")."""
    name = format_datetime(when, "z", tzinfo=zone, locale=locale_data(locale))
    if name[:1] not in "+-":
        return name
    abbr = when.astimezone(zone).tzname() or ""
    return abbr if abbr.isalpha() else format_datetime(when, "OOOO", tzinfo=zone, locale="en")


def _zone(timezone: str | None) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(check_timezone(timezone or "UTC"))
    except ValueError:
        return zoneinfo.ZoneInfo("UTC")


def clock(ts: int, timezone: str | None = None) -> str:
    """The time of day in the link's zone (UTC without one), with the zone: "08:38 MEZ".
    Links live minutes, so the time of day says enough on a page."""
    loc, zone, when = current(), _zone(timezone), _utc(ts)
    return f"{format_time(when, 'short', tzinfo=zone, locale=locale_data(loc))} {_zone_name(when, zone, loc)}"


def date_time(ts: int, timezone: str | None = None) -> str:
    """Date and time in the link's zone (UTC without one), with the zone: a mail may be read
    another day."""
    loc, zone, when = current(), _zone(timezone), _utc(ts)
    locale = locale_data(loc)
    # The locale's own way of joining a medium date and a short time (no seconds).
    text = (
        str(_datetime_pattern("medium", locale=locale))
        .replace("{1}", format_date(when.astimezone(zone), "medium", locale=locale))
        .replace("{0}", format_time(when, "short", tzinfo=zone, locale=locale))
    )
    return f"{text} {_zone_name(when, zone, loc)}"


def relative(ts: int, now: int) -> str:
    """ "in 5 minutes", "3 minutes ago", in the current locale (CLDR's own phrases and
    plural rules). Whole units, rounded towards zero: 3 min 59 s ago is "3 minutes ago"."""
    seconds = ts - now
    size = next((s for s in (86400, 3600, 60) if abs(seconds) >= s), 1)
    whole = int(abs(seconds) // size) * size * (1 if seconds >= 0 else -1)
    return format_timedelta(
        dt.timedelta(seconds=whole),
        add_direction=True,
        threshold=1.0,
        locale=locale_data(current()),
    )


def ago(ts: int, now: int, *, just_now: bool = True) -> str:
    """How long ago ``ts`` was: "just now", "less than a minute ago", "3 minutes ago".
    Without ``just_now``, the first ten seconds are "less than a minute ago" too (what an
    approval page says of a request someone made)."""
    seconds = max(0, now - ts)
    if seconds < 10 and just_now:
        return gettext(N_("just now"))
    if seconds < 60:
        return gettext(N_("less than a minute ago"))
    return relative(ts, now)


def duration(seconds: int) -> str:
    """A duration in words: "5 minutes", "45 seconds"."""
    return format_timedelta(
        dt.timedelta(seconds=seconds), threshold=1.5, locale=locale_data(current())
    )


# -- wiring --------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Load every catalog once and give the templates ``_``/``ngettext`` (Jinja's i18n
    extension with new-style callables of our own: autoescaped, ``%(name)s`` filled from
    keyword arguments, isolated on right-to-left pages)."""
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=_template_gettext, ngettext=_template_ngettext, newstyle=False
    )
    app.jinja_env.globals.update(
        html_lang=lambda: to_bcp47(current()), html_dir=lambda: direction(current())
    )
    app.jinja_env.filters["wrap"] = wrap


def wrap(value: Any, tag: str, id: str | None = None) -> Markup:
    """``<tag id=…>value</tag>``, escaped: markup around a placeholder stays out of the
    message, so translators move the whole placeholder and never see HTML."""
    attrs = Markup(' id="%s"') % id if id else Markup("")
    return Markup("<%s%s>%s</%s>") % (Markup(tag), attrs, value, Markup(tag))
