"""Tests of linksvc.mail: building and sending mail, the development outbox."""
