"""The end-user text in many languages: the compiled catalogs and the choice of
language for a request or a mail (``catalogs``), the list of shipped locales (``locales``),
and the ``translations/`` folder with the ``.po`` files the catalogs are compiled from.
"""
