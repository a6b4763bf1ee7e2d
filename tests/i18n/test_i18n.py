"""Every end user in their own language and time (PRODUCT §8, issue 22): locale tags and their
fallbacks, Accept-Language negotiation, a locale and a time zone per link (API, ledger,
status, never the token), the client's default, pages and mails in the link's language, plural
rules, and the catalog check that `make lint` runs.

Tests parametrised over the twelve locales run against whatever catalogs exist: a locale
whose catalog has no translation yet is skipped with that reason (the catalog check in
`make lint` is what fails for it); from its first translated message on, it is tested.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po, write_po

from linksvc.clients import registry as clients_mod
from linksvc.i18n import catalogs as i18n
from linksvc.i18n import locales
from linksvc.services import services
from linksvc.store import db
from tests.support.apps import make_api_user

ROOT = Path(__file__).resolve().parents[2]
TRANSLATIONS = ROOT / "linksvc" / "i18n" / "translations"
ADDRESS = "reader.k2@mail-test.example"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def catalog(locale: str) -> Any:
    with (TRANSLATIONS / locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return read_po(fh, locale=locale)


def translated(locale: str) -> bool:
    """Whether ``locale``'s catalog has any translation yet (English is the source)."""
    if locale == "en":
        return True
    path = TRANSLATIONS / locale / "LC_MESSAGES" / "messages.po"
    return path.exists() and any(m.id and m.string and all(m.string) for m in catalog(locale))


def needs(locale: str) -> None:
    if not translated(locale):
        pytest.skip(f"no {locale} translation yet (make lint's catalog check fails for it)")


def outbox_mail(app: Any, jti: str) -> email.message.EmailMessage:
    files = sorted(Path(app.config["LINKSVC"].mail_outbox).glob(f"*-{jti}.eml"))
    assert len(files) == 1
    return email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)


def parts(msg: email.message.EmailMessage) -> tuple[str, str]:
    return (
        msg.get_body(("plain",)).get_content(),  # type: ignore[union-attr]
        msg.get_body(("html",)).get_content(),  # type: ignore[union-attr]
    )


def html_tag(page: str) -> str:
    return re.search(r"<html[^>]*>", page).group(0)  # type: ignore[union-attr]


# -- tags and their fallbacks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "shipped"),
    [
        ("de", "de"),
        ("de-AT", "de"),
        ("DE-ch", "de"),
        ("en-GB", "en"),
        ("pt", "pt_BR"),
        ("pt-BR", "pt_BR"),
        ("pt-PT", "pt_BR"),
        ("zh", "zh_Hans"),
        ("zh-CN", "zh_Hans"),
        ("zh-Hans", "zh_Hans"),
        ("zh-Hans-SG", "zh_Hans"),
        ("ar-EG", "ar"),
        ("ja-JP-u-ca-japanese", "ja"),
        ("sr-Latn-RS", None),  # well-formed, not shipped: the caller's fallback decides
        ("sw", None),
        ("x-private", None),
    ],
)
def test_well_formed_tags_resolve_to_a_shipped_locale_or_none(tag, shipped):
    assert locales.resolve(tag) == shipped


@pytest.mark.parametrize(
    "tag",
    ["", "pt_BR", "de AT", "de--AT", "d", "1de", "de-", "-de", "de-AT-", "de\n", "a" * 36, "ü"],
)
def test_malformed_tags_are_refused(tag):
    with pytest.raises(ValueError):
        locales.resolve(tag)


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("de", "de"),
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("fr;q=0.5, de;q=0.9", "de"),  # q-values, not order
        ("en;q=0.9, ja", "ja"),  # no q is 1
        ("ja-JP,ja;q=0.9", "ja"),
        ("sw, ar;q=0.7, en;q=0.5", "ar"),  # unshipped languages are passed over
        ("de;q=0, fr", "fr"),  # q=0: not acceptable
        ("*", None),
        ("zh-CN,zh;q=0.9", "zh_Hans"),
        ("pt", "pt_BR"),
        # Malformed members are skipped, the rest still counts.
        ("de;q=2, fr", "fr"),
        ("de;q=abc, it", "it"),
        ("de;level=1, nl", "nl"),
        ("??, pl;q=0.4", "pl"),
        ("pt_BR, es;q=0.1", "es"),
        # Malformed or absurd headers count as absent.
        (";;;,,,", None),
        ("", None),
        (None, None),
        ("de," * 2000, None),
        ("\x00\x01", None),
    ],
)
def test_accept_language_negotiation(header, chosen):
    assert locales.negotiate(header) == chosen


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo", "UTC"])
def test_known_time_zones_pass(zone):
    assert locales.check_timezone(zone) == zone


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus_Mons", "europe/berlin", "../../etc/passwd", "/etc/localtime", "", "CET " * 20],
)
def test_unknown_time_zones_are_refused(zone):
    with pytest.raises(ValueError):
        locales.check_timezone(zone)


def test_direction_comes_from_cldr():
    assert [locales.direction(loc) for loc in ("en", "de", "ja", "ar")] == [
        "ltr",
        "ltr",
        "ltr",
        "rtl",
    ]


# -- the API: a locale and a time zone per link ----------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_mint_keeps_locale_and_zone_on_the_ledger_row_and_shows_them_not_in_the_token(api):
    link = api.minted(subject="u-1", locale="de-AT", timezone="Europe/Berlin")
    status = api.status(link["jti"]).get_json()
    assert status["locale"] == "de" and status["timezone"] == "Europe/Berlin"
    claims = claims_of(link["token"])
    assert set(claims) == {"iss", "aud", "sub", "pur", "jti", "iat", "nbf", "exp"}
    assert "Europe" not in link["token"] and "de" not in json.dumps(claims).replace(
        link["jti"], ""
    ).replace(claims["sub"], "").replace(claims["iss"], "").replace(claims["aud"], "")


def test_mint_without_locale_shows_null(api):
    status = api.status(api.minted(subject="u-2")["jti"]).get_json()
    assert status["locale"] is None and status["timezone"] is None


@pytest.mark.parametrize(
    ("tag", "shown"),
    [("pt", "pt-BR"), ("zh-CN", "zh-Hans"), ("zh", "zh-Hans"), ("ar-SA", "ar"), ("sw", "en")],
)
def test_unshipped_tags_fall_back_never_an_error(api, tag, shown):
    link = api.minted(subject="u-3", locale=tag)
    assert api.status(link["jti"]).get_json()["locale"] == shown


def test_unshipped_tag_falls_back_to_the_clients_default(app):
    api = make_api_user(app, "globex", display_name="Globex", locale="fr")
    link = api.minted(subject="u-4", locale="sw")
    assert api.status(link["jti"]).get_json()["locale"] == "fr"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"locale": "pt_BR"}, "locale"),
        ({"locale": "de AT"}, "locale"),
        ({"locale": ""}, "locale"),
        ({"locale": "x" * 100}, "locale"),
        ({"locale": 7}, "locale"),
        ({"locale": ["de"]}, "locale"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": "europe/berlin"}, "timezone"),
        ({"timezone": 60}, "timezone"),
        ({"locale": "de", "timezone": ""}, "timezone"),
    ],
)
def test_malformed_locale_or_unknown_zone_is_422_invalid_field(api, body, field):
    for path, payload in (
        ("/api/v1/links", {"purpose": "magic_link", "subject": "u-5", **body}),
        (
            "/api/v1/sign-ins",
            {
                "subject": "u-5",
                "email": ADDRESS,
                "ip": "203.0.113.9",
                "user_agent": FIREFOX_LINUX,
                **body,
            },
        ),
    ):
        resp = api.http.post(path, json=payload, headers=api.headers)
        problem = resp.get_json()
        assert resp.status_code == 422, (path, problem)
        assert problem["code"] == "invalid_field" and problem["field"] == field


def test_client_default_locale_by_the_command_line(app, runner):
    out = runner.invoke(args=["clients", "create", "initech", "--locale", "de-CH", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["locale"] == "de"
    out = runner.invoke(args=["clients", "update", "initech", "--locale", "ja", "--json"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(args=["clients", "list", "--json"])
    assert [c["locale"] for c in json.loads(out.output) if c["name"] == "initech"] == ["ja"]
    out = runner.invoke(args=["clients", "update", "initech", "--locale", ""])
    assert out.exit_code == 0, out.output
    out = runner.invoke(args=["clients", "list", "--json"])
    assert [c["locale"] for c in json.loads(out.output) if c["name"] == "initech"] == [None]
    # A malformed tag, or a language linksvc does not ship, is refused with the reason.
    for bad, said in (("pt_BR", "BCP 47"), ("sw", "ships")):
        out = runner.invoke(args=["clients", "update", "initech", "--locale", bad])
        assert out.exit_code != 0 and said in out.output


def test_client_default_locale_validated_by_the_clients_module(app):
    svc = services(app).links
    with db.write(svc.engine) as conn, pytest.raises(clients_mod.ClientError):
        clients_mod.create(conn, "bad-locale", purposes=["magic_link"], locale="de AT", now=0)


# -- pages -----------------------------------------------------------------------------------


def test_page_speaks_the_links_locale_whatever_the_browser_says(app, api, client):
    needs("de")
    link = api.minted(subject="u-6", locale="de", timezone="Europe/Berlin")
    page = client.get(f"/l/{link['token']}", headers={"Accept-Language": "ja"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html_tag(text) == '<html lang="de" dir="ltr">'
    assert "Bei Acme anmelden" in text and "MEZ" in text  # Berlin's zone, as German writes it


def test_page_without_a_locale_negotiates_accept_language(app, api, client):
    needs("de")
    link = api.minted(subject="u-7")
    page = client.get(f"/l/{link['token']}", headers={"Accept-Language": "fr;q=0.1, de-CH"})
    assert html_tag(page.get_data(as_text=True)) == '<html lang="de" dir="ltr">'
    assert "Bei Acme anmelden" in page.get_data(as_text=True)


def test_client_default_beats_the_browser(app, client):
    needs("de")
    api = make_api_user(app, "globex", display_name="Globex", locale="de")
    link = api.minted(subject="u-8")
    page = client.get(f"/l/{link['token']}", headers={"Accept-Language": "en"})
    assert html_tag(page.get_data(as_text=True)) == '<html lang="de" dir="ltr">'


@pytest.mark.parametrize(
    "header", ["de;q=abc", ";;;", "\x7f\x00", "ü" * 5000, "de-" * 40, "q=1;de", "*;q=x"]
)
def test_malformed_accept_language_is_ignored_never_a_500(client, header):
    for path in ("/", "/l/not-a-token", "/s/nope", "/d/nope"):
        resp = client.get(path, headers={"Accept-Language": header})
        assert resp.status_code < 500, (path, header)
        assert html_tag(resp.get_data(as_text=True)) in (
            '<html lang="en" dir="ltr">',
            '<html lang="de" dir="ltr">',  # "de;q=abc" is skipped, but "de-"... is not de
        )


def test_invalid_link_page_negotiates_and_arabic_is_right_to_left(client):
    page = client.get("/l/not-a-token", headers={"Accept-Language": "ar-EG,ar;q=0.9"})
    assert page.status_code == 400
    assert html_tag(page.get_data(as_text=True)) == '<html lang="ar" dir="rtl">'


def test_landing_page_negotiates(client):
    needs("de")
    page = client.get("/", headers={"Accept-Language": "de"}).get_data(as_text=True)
    assert html_tag(page) == '<html lang="de" dir="ltr">' and "Dieser Dienst" in page
    assert 'id="version"' in page


def test_failure_page_of_a_german_link_is_german_with_the_time_in_its_zone(app, api, client):
    needs("de")
    link = api.minted(subject="u-9", locale="de", timezone="Asia/Tokyo", ttl=60)
    services(app).links.clock = lambda: link_exp(api, link) + 130
    page = client.get(f"/l/{link['token']}").get_data(as_text=True)
    assert "Dieser Anmeldelink für Acme ist um" in page and "JST" in page
    assert "vor 2 Minuten" in page


def link_exp(api: Any, link: dict[str, Any]) -> int:
    return int(claims_of(link["token"])["exp"])


def test_wrong_code_notice_uses_the_languages_plural(app, api):
    needs("de")
    laptop = app.test_client()
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={
            "subject": "u-10",
            "email": ADDRESS,
            "ip": "203.0.113.7",
            "user_agent": FIREFOX_LINUX,
            "locale": "de",
        },
        headers=api.headers,
    )
    assert resp.status_code == 201
    wait = "/s/" + resp.get_json()["id"]
    page = laptop.get(wait)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    texts = []
    for _ in range(4):
        wrong = laptop.post(wait + "/code", data={"csrf": csrf, "code": "0000-0000"})
        texts.append(wrong.get_data(as_text=True))
    assert "Noch 4 Versuche." in texts[0] and "Noch 1 Versuch." in texts[3]
    # The requesting browser in German words, around its names.
    phone = app.test_client()
    mail = outbox_mail(app, resp.get_json()["jti"])
    link = re.search(r"/l/\S+", parts(mail)[0]).group(0)  # type: ignore[union-attr]
    approve = phone.get(link, headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Firefox unter Linux" in approve and 'lang="de"' in approve


# -- mails -----------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", locales.LOCALES)
def test_mail_in_each_locale_with_content_language_and_the_time_in_its_zone(app, api, locale):
    needs(locale)
    tag = locales.to_bcp47(locale)
    link = api.minted(subject="u-11", email=ADDRESS, locale=tag, timezone="Asia/Tokyo", ttl=300)
    msg = outbox_mail(app, link["jti"])
    text, html = parts(msg)
    assert msg["Content-Language"] == tag
    assert f'<html lang="{tag}" dir="{locales.direction(locale)}">' in html
    with app.test_request_context(), i18n.using(locale):
        subject = i18n.gettext("Your sign-in link for %(app)s", app="Acme")
        expiry = i18n.gettext(
            "This link works once and expires at %(time)s.",
            time=i18n.date_time(link_exp(api, link), "Asia/Tokyo"),
        )
    assert msg["Subject"] == subject and expiry in text
    # Tokyo's time of day, not UTC's: 9 hours ahead.
    hour = (link_exp(api, link) // 3600 + 9) % 24
    assert re.search(rf"\b0?{hour % 12 or 12}\b|\b{hour:02d}\b", expiry), expiry
    if locale != "en":
        assert subject != "Your sign-in link for Acme", "subject not translated"
        english = {"Open this link to sign in:", "Or copy this address into your browser:"}
        assert not any(e in text for e in english), "body not translated"


def test_german_sign_in_mail_names_the_waiting_pages_host(app, api):
    needs("de")
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={
            "subject": "u-12",
            "email": ADDRESS,
            "ip": "203.0.113.7",
            "user_agent": FIREFOX_LINUX,
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
        },
        headers=api.headers,
    )
    assert resp.status_code == 201, resp.get_json()
    host = resp.get_json()["wait_url"].split("/")[2]
    msg = outbox_mail(app, resp.get_json()["jti"])
    text, html = parts(msg)
    assert msg["Subject"] == "Ihr Anmeldelink für Acme" and msg["Content-Language"] == "de"
    assert f"Geben Sie diesen Code nur unter {host} ein." in text
    assert f'<strong id="code-host">{host}</strong>' in html
    assert "MEZ" in text and "UTC" not in text
    assert '<html lang="de" dir="ltr">' in html


def test_english_mail_names_the_host_where_the_code_is_typed(app, api):
    """#24 item 16: a look-alike page asking for the code stands out."""
    resp = api.http.post(
        "/api/v1/sign-ins",
        json={"subject": "u-13", "email": ADDRESS, "ip": "203.0.113.7", "user_agent": "x"},
        headers=api.headers,
    )
    host = resp.get_json()["wait_url"].split("/")[2]
    text, html = parts(outbox_mail(app, resp.get_json()["jti"]))
    assert f"on the page where you asked to sign in, at {host}:" in text
    assert f"Type this code only on {host}." in text and host in html


def test_mail_without_a_zone_says_in_how_long_and_the_utc_time(app, api):
    link = api.minted(subject="u-14", email=ADDRESS, ttl=300)
    msg = outbox_mail(app, link["jti"])
    text, _ = parts(msg)
    assert "expires in 5 minutes, at" in text and "UTC." in text
    assert msg["Content-Language"] == "en"


def test_mail_uses_the_clients_default_locale(app):
    needs("de")
    api = make_api_user(app, "globex", display_name="Globex", locale="de")
    link = api.minted("password_reset", subject="u-15", email=ADDRESS)
    msg = outbox_mail(app, link["jti"])
    assert msg["Content-Language"] == "de"
    assert msg["Subject"] == "Setzen Sie Ihr Passwort für Globex zurück"
    assert "in 5 Minuten" in parts(msg)[0]


# -- plural rules ------------------------------------------------------------------------------

PLURAL = (
    "That code is not right. %(num)d try left.",
    "That code is not right. %(num)d tries left.",
)


@pytest.mark.parametrize(
    ("locale", "counts"),
    [
        ("en", (1, 2)),
        ("de", (1, 2)),
        ("pl", (1, 2, 5)),  # one (1), few (2-4, 22-24 ...), many (5-21, 25 ...)
        # zero, one, two, few (3-10) and many (11-99) read differently; "other" (100-102)
        # may be written like "many" without vowel marks, so it is not counted here.
        ("ar", (1, 2, 3, 11)),
    ],
)
def test_plural_forms_follow_the_languages_rules(app, locale, counts):
    needs(locale)
    with app.test_request_context(), i18n.using(locale):

        def form(n: int) -> str:
            return re.sub(r"[0-9\u0660-\u0669]+", "#", i18n.ngettext(*PLURAL, n))

        forms = [form(n) for n in counts]
        # As many different sentences as the language has categories for these counts.
        assert len(set(forms)) == len(counts), forms
        if locale == "pl":
            assert form(22) == forms[1] and form(25) == forms[2] and form(12) == forms[2]
        if locale == "ar":
            assert form(7) == forms[2] and form(99) == forms[3] and form(103) == forms[2]
            assert all(not f.startswith("That code") for f in [*forms, form(0), form(100)])


# -- the catalog check (make lint) -------------------------------------------------------------


def run_check(directory: Path, *locales_: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "check_catalogs.py"),
            "--dir",
            str(directory),
            "--require",
            *locales_,
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def german_copy(tmp_path: Path) -> Path:
    needs("de")
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    shutil.copy(TRANSLATIONS / "messages.pot", tmp_path / "messages.pot")
    shutil.copy(
        TRANSLATIONS / "de" / "LC_MESSAGES" / "messages.po",
        tmp_path / "de" / "LC_MESSAGES" / "messages.po",
    )
    return tmp_path


def break_catalog(directory: Path, msgid: str, change: Any) -> None:
    po = directory / "de" / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as fh:
        cat = read_po(fh, locale="de")
    change(cat[msgid])
    with po.open("wb") as fh:
        write_po(fh, cat, width=0)


def test_catalog_check_passes_the_complete_german_catalog(german_copy):
    done = run_check(german_copy, "de")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("msgid", "change", "said"),
    [
        ("Approve", lambda m: setattr(m, "string", ""), "untranslated"),
        ("Approve", lambda m: m.flags.add("fuzzy"), "fuzzy"),
        (
            "Sign in to %(app)s",
            lambda m: setattr(m, "string", "Bei %(ap)s anmelden"),
            "unknown placeholder",
        ),
        (
            "Sign in to %(app)s",
            lambda m: setattr(m, "string", "Anmelden"),
            "missing",
        ),
        (
            "Deny",
            lambda m: setattr(m, "string", '<a href="https://evil.example">Ablehnen</a>'),
            "markup",
        ),
        (  # a plural form left out: gettext would show nothing for "2 tries"
            PLURAL[0],
            lambda m: setattr(m, "string", ("Noch %(num)d Versuch.", "")),
            "untranslated",
        ),
        (
            PLURAL[0],
            lambda m: setattr(m, "string", ("Noch %(num)d Versuch.", "Noch %(n)d Versuche.")),
            "unknown placeholder",
        ),
    ],
)
def test_catalog_check_fails_on_a_broken_copy(german_copy, msgid, change, said):
    break_catalog(german_copy, msgid, change)
    done = run_check(german_copy, "de")
    assert done.returncode == 1
    assert said in done.stdout and "de:" in done.stdout


def test_catalog_check_fails_where_english_says_other_than_the_code(tmp_path: Path):
    """The source catalog once shipped "Return to %(app)s" as "Sign in to %(app)s" (a
    near match msgmerge filled in): every English page said the wrong thing."""
    (tmp_path / "en" / "LC_MESSAGES").mkdir(parents=True)
    shutil.copy(TRANSLATIONS / "messages.pot", tmp_path / "messages.pot")
    po = tmp_path / "en" / "LC_MESSAGES" / "messages.po"
    shutil.copy(TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po", po)
    assert run_check(tmp_path, "en").returncode == 0
    with po.open("rb") as fh:
        cat = read_po(fh, locale="en")
    cat["Return to %(app)s"].string = "Sign in to %(app)s"
    with po.open("wb") as fh:
        write_po(fh, cat, width=0)
    done = run_check(tmp_path, "en")
    assert done.returncode == 1 and "Return to %(app)s" in done.stdout


def test_catalog_check_fails_on_the_wrong_number_of_plural_forms(german_copy):
    po = german_copy / "de" / "LC_MESSAGES" / "messages.po"
    text = po.read_text(encoding="utf-8")
    po.write_text(
        text.replace("nplurals=2; plural=(n != 1);", "nplurals=1; plural=0;"), encoding="utf-8"
    )
    done = run_check(german_copy, "de")
    assert done.returncode == 1 and "nplurals=1" in done.stdout


def test_catalog_check_fails_for_a_required_locale_without_catalog(german_copy):
    done = run_check(german_copy, "de", "fr")
    assert done.returncode == 1 and "fr: no catalog" in done.stdout


def test_catalog_check_fails_for_a_catalog_behind_the_template(german_copy):
    pot = german_copy / "messages.pot"
    pot.write_text(
        pot.read_text() + '\nmsgid "A message added since"\nmsgstr ""\n', encoding="utf-8"
    )
    done = run_check(german_copy, "de")
    assert done.returncode == 1 and "A message added since" in done.stdout


def test_every_shipped_locale_has_a_catalog_directory():
    for loc in locales.LOCALES:
        assert (TRANSLATIONS / loc / "LC_MESSAGES" / "messages.po").is_file(), loc


def test_a_broken_translation_shows_english_never_a_500(app, tmp_path):
    """A deployed catalog that slipped past `make lint`: a stray %, a misspelt placeholder
    or markup in a translation drops that one message (English instead), nothing else."""
    needs("de")
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    po = tmp_path / "de" / "LC_MESSAGES" / "messages.po"
    shutil.copy(TRANSLATIONS / "de" / "LC_MESSAGES" / "messages.po", po)
    with po.open("rb") as fh:
        cat = read_po(fh, locale="de")
    cat["Sign in to %(app)s"].string = "Bei %(ap)s anmelden"
    cat["Your sign-in link for %(app)s"].string = "100 % Ihr Link für %(app)s"
    cat["Deny"].string = '<a href="https://evil.example">Ablehnen</a>'
    with po.open("wb") as fh:
        write_po(fh, cat, width=0)
    services(app).catalogs = i18n.Catalogs(tmp_path)
    with app.test_request_context(), i18n.using("de"):
        assert i18n.gettext("Sign in to %(app)s", app="Acme") == "Sign in to Acme"
        assert i18n.gettext("Your sign-in link for %(app)s", app="Acme") == (
            "Your sign-in link for Acme"
        )
        assert i18n.gettext("Deny") == "Deny"
        assert i18n.gettext("Approve") == "Zulassen"  # the rest of the catalog stays


def test_placeholders_are_bidi_isolated_on_right_to_left_pages_only(app, api, client):
    """A Latin name in an Arabic sentence keeps its direction (FSI … PDI, UAX #9)."""
    with app.test_request_context():
        with i18n.using("ar"):
            assert "\u2068Acme\u2069" in i18n.gettext("Sign in to %(app)s", app="Acme")
        with i18n.using("de"):
            assert "\u2068" not in i18n.gettext("Sign in to %(app)s", app="Acme")
    link = api.minted(subject="u-16", locale="ar")
    page = client.get(f"/l/{link['token']}").get_data(as_text=True)
    assert "\u2068Acme\u2069" in page and '<html lang="ar" dir="rtl">' in page
    assert "\u2068" not in client.get(f"/l/{api.minted(subject='u-17')['token']}").get_data(
        as_text=True
    )


def test_refused_form_page_speaks_the_links_language(api, client):
    needs("de")
    link = api.minted(subject="u-18", locale="de")
    resp = client.post(f"/l/{link['token']}", data={"csrf": "forged"})
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert html_tag(page) == '<html lang="de" dir="ltr">'
    assert "Wir konnten diese Anfrage nicht bestätigen" in page
