#!/usr/bin/env python3
"""Check that every translation catalog is complete and safe to ship (run by `make lint`).

    scripts/check_catalogs.py [--dir linksvc/i18n/translations] [--require LOCALE ...]
    scripts/check_catalogs.py --fill-source en     # `make i18n`: English msgstr = msgid

For each required locale (the shipped ones, linksvc.i18n.locales.LOCALES) and every other locale
directory that exists, ``LC_MESSAGES/messages.po`` must:

- exist, and hold every message of ``messages.pot`` (a catalog not yet updated is incomplete);
- have no untranslated and no fuzzy entry;
- use exactly the English message's placeholders (``%(app)s`` …; a plural form may leave out
  its count ``%(num)d``, as "one try" is written in many languages), and no markup the
  English has not (the templates treat a translation as HTML-safe);
- give every plural message the number of forms of the language's CLDR plural rules;
- in the source language (English), say exactly what the code says (msgstr = msgid);
- compile without a warning (Babel's own checks, then to ``.mo`` in memory).

Prints one line per problem (``de: "Sign in to %(app)s": fuzzy``) and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.mofile import write_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from linksvc.i18n.locales import DEFAULT, LOCALES  # noqa: E402

PLACEHOLDER = re.compile(r"%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[-#0 +]*\d*(?:\.\d+)?[sdifr%]")
COUNT = "%(num)d"


def _ids(message: Message) -> tuple[str, ...]:
    return message.id if isinstance(message.id, tuple) else (message.id,)


def _strs(message: Message) -> tuple[str, ...]:
    return message.string if isinstance(message.string, tuple) else (message.string,)


def placeholders(text: str) -> set[str]:
    return {p for p in PLACEHOLDER.findall(text) if p != "%%"}


def _read(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as fh:
        return read_po(fh, locale=locale)


def check_catalog(po: Path, locale: str, template: Catalog) -> list[str]:
    """The problems of one catalog, as lines for a person."""
    if not po.exists():
        return [f"{locale}: no catalog at {po}"]
    try:
        catalog = _read(po, locale)
    except Exception as exc:  # a file that does not parse is one problem, not a traceback
        return [f"{locale}: does not parse: {exc}"]
    problems: list[str] = []

    def say(message: Message, what: str) -> None:
        problems.append(f"{locale}: {_ids(message)[0]!r}: {what}")

    expected_forms = get_plural(locale).num_plurals
    if catalog.num_plurals != expected_forms:
        problems.append(
            f"{locale}: Plural-Forms has nplurals={catalog.num_plurals}; "
            f"{locale} has {expected_forms} (CLDR)"
        )
    for wanted in template:
        if wanted.id and wanted.id not in catalog:
            say(wanted, "missing (run `make i18n`)")
    for message in catalog:
        if not message.id:
            continue
        if message.fuzzy:
            say(message, "fuzzy")
        strings = _strs(message)
        if any(not s for s in strings):
            say(message, "untranslated")
            continue
        ids = _ids(message)
        english = set().union(*(placeholders(i) for i in ids))
        plural = isinstance(message.id, tuple)
        if plural and len(strings) != catalog.num_plurals:
            say(message, f"{len(strings)} plural forms, not {catalog.num_plurals}")
        for s in strings:
            found = placeholders(s)
            allowed_missing = {COUNT} if plural else set()
            if found - english:
                say(message, f"unknown placeholder {sorted(found - english)} in {s!r}")
            if english - found - allowed_missing:
                say(message, f"placeholder {sorted(english - found)} missing in {s!r}")
            if ("<" in s or ">" in s) and not any("<" in i or ">" in i for i in ids):
                say(message, f"markup in the translation: {s!r}")
        if locale == DEFAULT and strings[0] != ids[0]:
            say(message, f"the source language says {strings[0]!r}, not what the code says")
    # Babel's own checks (what `pybabel compile` warns about), then the compile itself.
    for message, errors in catalog.check():
        for error in errors:
            say(message, f"does not compile cleanly: {error}")
    try:
        write_mo(io.BytesIO(), catalog)
    except Exception as exc:
        problems.append(f"{locale}: does not compile: {exc}")
    return problems


def check(directory: Path, required: Iterable[str]) -> list[str]:
    template_path = directory / "messages.pot"
    if not template_path.exists():
        return [f"no template at {template_path} (run `make i18n`)"]
    template = _read(template_path)
    present = {p.name for p in directory.iterdir() if (p / "LC_MESSAGES").is_dir()}
    problems: list[str] = []
    for locale in sorted(set(required) | present):
        problems += check_catalog(
            directory / locale / "LC_MESSAGES" / "messages.po", locale, template
        )
    return problems


def fill_source(directory: Path, locale: str) -> None:
    """The source language's catalog says what the code says: msgstr = msgid."""
    po = directory / locale / "LC_MESSAGES" / "messages.po"
    catalog = _read(po, locale)
    for message in catalog:
        if not message.id:
            continue
        # Always, not only where empty: msgmerge fills a new message with a near match as
        # fuzzy ("Return to %(app)s" once shipped as "Sign in to %(app)s").
        if isinstance(message.id, tuple):
            message.string = (message.id[0], *[message.id[1]] * (catalog.num_plurals - 1))
        else:
            message.string = message.id
        message.flags.discard("fuzzy")
    with po.open("wb") as fh:
        write_po(fh, catalog, width=0, ignore_obsolete=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "linksvc" / "i18n" / "translations")
    parser.add_argument("--require", nargs="*", default=list(LOCALES), metavar="LOCALE")
    parser.add_argument("--fill-source", metavar="LOCALE")
    args = parser.parse_args(argv)
    if args.fill_source:
        fill_source(args.dir, args.fill_source or DEFAULT)
        return 0
    problems = check(args.dir, args.require)
    for line in problems:
        print(line)
    if problems:
        print(f"check_catalogs: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"check_catalogs: every catalog in {args.dir} is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
