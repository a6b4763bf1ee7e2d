"""Tests of linksvc.downloads: the download view and its storage."""
