"""Tests of the whole system: journeys, attacks, the image, servers, docs and tools."""
