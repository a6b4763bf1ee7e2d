"""Webhooks to the relying applications: the endpoints a client registers
(``endpoints``), the transactional outbox that records each event beside the change that
caused it (``outbox``), the relay that delivers them with retries (``relay``), the guard that
keeps deliveries away from private networks (``ssrf``), the signatures a receiver checks
(``signature``) and the command-line tools to inspect and replay them (``cli``).
"""
