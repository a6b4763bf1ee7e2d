"""Tests of linksvc.clients: the registry and the clients' brands."""
