"""Tests of the Python client (clients/python) against a live linksvc."""
