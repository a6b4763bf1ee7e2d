"""Tests of linksvc.webhooks: endpoints, outbox, relay, SSRF guard, signatures."""
