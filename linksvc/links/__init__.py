"""The link itself: how a token is signed and verified (``tokens``), the signing keys
that do it and their rotation (``keys``), the short handles that stand for a token
(``handles``), the ledger that owns the ``links`` and ``link_events`` tables and every state
change written to them (``ledger``), the exchange codes a redemption can hand out
(``codes``), the idempotency records that make a retried mint safe (``idempotency``), the
mail-scanner heuristics (``scanners``) and ``LinkService``, the Flask-free core that mints,
redeems and revokes (``service``). It imports the store, never the web layer.
"""
