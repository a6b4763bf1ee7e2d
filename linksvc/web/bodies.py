"""Reading a request's body: its bytes, within the size limit, whole, as JSON, as a model.

The first steps of every call that takes a JSON body, in the order their refusals are
answered: too large (413), cut short of its ``Content-Length`` or missing (400), not
``application/json`` (415); then the body's form and members (linksvc.web.contract: 400, 422).
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request

from linksvc.web import contract
from linksvc.web.contract import BadRequest

B = TypeVar("B", bound=contract.Body)


def read_at_most(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream``, fewer only at its end (a read may return less)."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, "body_too_large", f"The request body must be at most {limit} bytes.")


def raw_body(required: bool = True) -> bytes:
    """The request body's bytes, not empty (``b""`` when optional and empty), or a
    400/413/415 BadRequest."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    environ = request.environ
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    # A declared length is read as it is, straight from the server's stream (WSGI's
    # contract: no more than CONTENT_LENGTH). A body without one (chunked) is read only from
    # a server that ends the stream itself (wsgi.input_terminated, as gunicorn and werkzeug's
    # server do; werkzeug's safe fallback otherwise), one byte past the limit: werkzeug's
    # limited stream stopped *at* the limit and handed over a cut-off body, which then
    # failed as invalid JSON instead of being too large.
    if length is not None:
        raw: bytes = environ["wsgi.input"].read(length)
    elif environ.get("wsgi.input_terminated"):
        raw = read_at_most(environ["wsgi.input"], limit + 1)
        if len(raw) > limit:
            raise _too_large(limit)
    else:
        raw = b""
    if length is not None and len(raw) < length:
        # The stream ended early (the client went away): never act on part of a body, even
        # one that happens to parse.
        raise BadRequest(400, "invalid_json", "The body ended before its Content-Length.")
    # Only JSON's own whitespace makes an empty body: bytes.strip() also removed \x0b and
    # \x0c, so a body of a vertical tab (not JSON) passed as no body at all.
    if not raw.strip(b" \t\n\r"):
        if required:
            raise BadRequest(400, "body_required", "A JSON object body is required.")
        return b""
    # request.mimetype, without parsing the header's parameters it would keep.
    if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
        raise BadRequest(415, "unsupported_media_type", "The body must be application/json.")
    return raw


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 BadRequest."""
    return contract.parse_object(raw_body())


def body_as(decoder: contract.Decoder[B], required: bool = True) -> B:
    """The request body as ``decoder``'s model (``{}`` when optional and empty), or the
    400/413/415/422 BadRequest the API answers (linksvc.web.contract)."""
    raw = raw_body(required)
    return decoder.decode(raw) if raw else decoder.validate({})
