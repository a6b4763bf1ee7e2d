"""Tests of linksvc.web: the API, the pages, problems, headers, OpenAPI, rate limits."""
