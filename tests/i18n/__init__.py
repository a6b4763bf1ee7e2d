"""Tests of linksvc.i18n: catalogs, locales and the translated pages and mails."""
