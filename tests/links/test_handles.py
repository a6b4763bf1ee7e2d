"""Short links' handles (linksvc.links.handles): 128 bits in 26 Crockford base32 characters, read
in any case and with Crockford's aliases, kept only as a keyed hash."""

from __future__ import annotations

import pytest

from linksvc.links import handles


def test_encode_decode_round_trip_and_form():
    for _ in range(500):
        raw = handles.new()
        text = handles.encode(raw)
        assert len(text) == 26 and set(text) <= set(handles.ALPHABET) and text[0] in "01234567"
        assert handles.decode(text) == raw
        assert handles.decode(text.lower()) == raw
    assert handles.encode(bytes(16)) == "0" * 26
    assert handles.encode(b"\xff" * 16) == "7" + "Z" * 25


def test_aliases_read_as_crockford_says():
    raw = handles.decode("01" * 13)
    assert raw is not None
    for spelling in ("Ol" * 13, "oI" * 13, "0i" * 13, "OL" * 13):
        assert handles.decode(spelling) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 25,
        "0" * 27,
        "8" + "0" * 25,
        "U" + "0" * 25,
        "0" * 25 + "-",
        "0" * 12 + "-" + "0" * 13,
        "0" * 25 + "é",
        "0" * 25 + "\x00",
    ],
)
def test_anything_else_is_no_handle(text):
    assert handles.decode(text) is None
    assert handles.from_path(b"k" * 32, text) is None


def test_the_keyed_hash_is_one_per_handle_and_per_secret():
    raw = handles.new()
    text = handles.encode(raw)
    a, b = b"a" * 32, b"b" * 32
    assert (
        handles.from_path(a, text.lower())
        == handles.from_path(a, text)
        == handles.Handle(handles.digest(a, raw))
    )
    assert handles.digest(a, raw) != handles.digest(b, raw)
    assert text not in repr(handles.from_path(a, text))  # nothing a log line could leak
    assert handles.from_path(None, text) is None


def test_derived_handles_differ_per_client_key_and_link():
    s = b"s" * 32
    one = handles.derive(s, client_id="cl_1", seed="k", jti="j" * 22)
    assert one == handles.derive(s, client_id="cl_1", seed="k", jti="j" * 22)
    assert len(one) == 16
    assert one != handles.derive(s, client_id="cl_2", seed="k", jti="j" * 22)
    assert one != handles.derive(s, client_id="cl_1", seed="k2", jti="j" * 22)
    assert one != handles.derive(s, client_id="cl_1", seed="k", jti="J" * 22)
    assert one != handles.derive(b"t" * 32, client_id="cl_1", seed="k", jti="j" * 22)
