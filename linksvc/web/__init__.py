"""The HTTP face of linksvc: the JSON API (``api``), the end-user pages (``pages``) with
their HTML helpers (``html``) and the clients' colours (``branding``), problem documents and
the problem catalogue (``problems``), response helpers and security headers (``http``),
the OpenAPI document and its Swagger UI (``openapi``, ``docs``), and the rate limits in
front of it all (``ratelimit``). It calls the features; nothing calls it.
"""
