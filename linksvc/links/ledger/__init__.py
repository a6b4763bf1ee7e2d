"""The ledger: every minted link, its state, and its history.

Single use rests on one conditional UPDATE (``issued`` → ``consumed`` where the state is
still ``issued``) whose row count decides the winner, committed before the caller
answers. Keyed on ``jti``, never on the token string, which is never stored.
This package knows nothing of Flask; ``now`` is always a parameter.

It owns the ``links`` and ``link_events`` tables: every state change, history event and
webhook emission of a link goes through the transitions below, each in one transaction
(tests/links/test_ownership.py holds every other module to it). Its rooms:

- :mod:`.records` — the states, :class:`LinkRecord`, :class:`Event`;
- :mod:`.statements` — each statement once, the reads of a link and the event writes;
- :mod:`.mint` — recording a mint, superseding the subject's older links;
- :mod:`.consume` — consuming once, replays, settling a sign-in's link;
- :mod:`.revocation` — revoking a link or a subject, ending approved sign-ins;
- :mod:`.history` — a link's history, a subject's links, the ``viewed`` note;
- :mod:`.retention` — purging what is past retention.

Callers use the names below (``ledger.consume``, ``ledger.LinkRecord``).
"""

from linksvc.links.ledger.consume import (
    check_outstanding,
    consume,
    record_rejection,
    same_browser,
    settle,
)
from linksvc.links.ledger.history import events, history, links_of, note_view
from linksvc.links.ledger.mint import insert_link, lock_subject, record_mint, supersede_older
from linksvc.links.ledger.records import (
    CHALLENGE_PREFIX,
    CHALLENGE_RE,
    CONSUMED,
    ISSUED,
    REVOKED,
    SUPERSEDED,
    Event,
    LinkRecord,
    stored_challenge,
)
from linksvc.links.ledger.retention import MIN_RETENTION_SECONDS, purge
from linksvc.links.ledger.revocation import (
    SIGN_IN_APPROVED,
    SIGN_IN_COMPLETE_GRACE,
    SIGN_IN_ENDED,
    end_approved_sign_ins,
    end_approved_sign_ins_of,
    revoke,
    revoke_subject,
)
from linksvc.links.ledger.statements import (
    MAX_REJECTION_EVENTS,
    add_event,
    add_rejection,
    get,
    get_by_handle,
)

__all__ = [
    "CHALLENGE_PREFIX",
    "CHALLENGE_RE",
    "CONSUMED",
    "ISSUED",
    "MAX_REJECTION_EVENTS",
    "MIN_RETENTION_SECONDS",
    "REVOKED",
    "SIGN_IN_APPROVED",
    "SIGN_IN_COMPLETE_GRACE",
    "SIGN_IN_ENDED",
    "SUPERSEDED",
    "Event",
    "LinkRecord",
    "add_event",
    "add_rejection",
    "check_outstanding",
    "consume",
    "end_approved_sign_ins",
    "end_approved_sign_ins_of",
    "events",
    "get",
    "get_by_handle",
    "history",
    "insert_link",
    "links_of",
    "lock_subject",
    "note_view",
    "purge",
    "record_mint",
    "record_rejection",
    "revoke",
    "revoke_subject",
    "same_browser",
    "settle",
    "stored_challenge",
    "supersede_older",
]
