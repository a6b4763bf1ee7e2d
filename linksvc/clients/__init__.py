"""The relying applications: their registration, API keys, allowed purposes and
redirect URIs (``registry``), and the brand each one may give the pages and mails sent on
its behalf, checked for legibility before it is stored (``branding``).
"""
