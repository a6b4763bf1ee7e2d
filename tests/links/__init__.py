"""Tests of linksvc.links: tokens, keys, handles, the ledger, codes and the service."""
