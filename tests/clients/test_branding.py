"""Branding per client (issue 23): each client's logo, colour, support contact and mail sender
name on the pages and mails of its links, and nothing of another client's.

The logo upload is attacked as an attacker would: SVG under an image type, a decompression
bomb, a polyglot with data appended, a JPEG carrying EXIF (camera, author), bytes that are no
image; a colour whose button text cannot be read is refused with its ratio. The browser half
(tests/web/test_branding_browser.py) checks what Chromium shows.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from linksvc.clients import branding
from linksvc.services import services
from linksvc.store import db
from tests.support.apps import make_api_user

ADDRESS = "reader.8k2@mail-test.example"


# -- image makers ---------------------------------------------------------------------


def png(width: int = 64, height: int = 32, color: tuple[int, ...] = (15, 118, 110)) -> bytes:
    mode = "RGBA" if len(color) == 4 else "RGB"
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_with_exif() -> bytes:
    im = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0131] = "GPS-leaking editor 1.0"  # Software
    exif[0x013B] = "Jane Doe, 12 Secret Lane"  # Artist
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), comment=b"secret comment")
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming ``width``×``height`` with a tiny (compressed) body: a few
    KiB that would inflate to gigabytes if decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # greyscale
    row = b"\x00" + b"\x00" * width
    body = zlib.compress(row * 64, 9)  # a start of the rows: enough to begin inflating
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
)


# -- the rules, without HTTP ----------------------------------------------------------


def test_contrast_matches_wcag_reference_values():
    assert branding.contrast("#ffffff", "#000000") == pytest.approx(21.0)
    assert branding.contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert branding.button_text("#ffd700")[0] == branding.DARK_TEXT  # gold: dark text
    assert branding.button_text("#0b57d0")[0] == branding.LIGHT_TEXT


@pytest.mark.parametrize("color", ["#777777", "#808080", "#d9534f", "#2e8b57"])
def test_a_colour_no_button_text_can_read_on_is_refused_naming_the_ratio(color):
    with pytest.raises(branding.BrandingRefused) as info:
        branding.validate_brand_color(color)
    assert info.value.code == "brand_color_low_contrast"
    ratio = re.search(r"contrast of ([0-9.]+):1", info.value.detail)
    assert ratio and float(ratio.group(1)) < 4.5, info.value.detail


@pytest.mark.parametrize("color", ["#0B57D0", "#ffd700", "#000000", "#ffffff", "#0f766e"])
def test_a_readable_colour_is_taken_in_lower_case(color):
    assert branding.validate_brand_color(color) == color.lower()
    text, ratio = branding.button_text(color.lower())
    assert ratio >= 4.5
    css, digest = branding.stylesheet(color.lower())
    assert f"background: {color.lower()}; color: {text};" in css
    assert digest == hashlib.sha256(css.encode()).hexdigest()[:16]


def test_every_hover_colour_keeps_the_contrast():
    for color in ("#0b57d0", "#ffd700", "#e6e6e6", "#5a5a5a", "#00ff00", "#b00020"):
        text, ratio = branding.button_text(color)
        css, _ = branding.stylesheet(color)
        hover = re.search(r"a\.button:hover \{ background: (#[0-9a-f]{6})", css).group(1)
        assert branding.contrast(hover, text) >= ratio, (color, hover)


def test_a_logo_is_re_encoded_without_metadata_or_appended_data():
    raw = jpeg_with_exif()
    with Image.open(io.BytesIO(raw)) as im:
        assert im.getexif().get(0x010F) == "SecretCam"  # the attack is real
    logo = branding.process_logo(raw + b"PK\x03\x04 appended zip or script")
    assert logo.content_type == "image/jpeg"
    assert b"SecretCam" not in logo.data and b"GPS-leaking" not in logo.data
    assert (
        b"Secret Lane" not in logo.data
        and b"secret comment" not in logo.data
        and b"appended" not in logo.data
    )
    with Image.open(io.BytesIO(logo.data)) as im:
        assert not im.getexif() and "exif" not in im.info and "icc_profile" not in im.info
    assert logo.sha256 == hashlib.sha256(logo.data).hexdigest()


def test_png_text_chunks_are_dropped_and_webp_becomes_png():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "tracking-id-123")
    buf = io.BytesIO()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(buf, "PNG", pnginfo=info)
    logo = branding.process_logo(buf.getvalue())
    assert logo.content_type == "image/png" and b"tracking-id-123" not in logo.data
    with Image.open(io.BytesIO(logo.data)) as im:
        assert im.mode == "RGBA"  # transparency kept
    webp = io.BytesIO()
    Image.new("RGB", (40, 20), (1, 2, 3)).save(webp, "WEBP")
    assert branding.process_logo(webp.getvalue()).content_type == "image/png"


def test_a_large_logo_is_stored_smaller():
    logo = branding.process_logo(png(2000, 500))
    with Image.open(io.BytesIO(logo.data)) as im:
        assert im.size == (512, 128)


@pytest.mark.parametrize(
    "data,code,status",
    [
        (SVG, "logo_svg_refused", 415),
        (b"\n  <svg xmlns='http://www.w3.org/2000/svg'/>", "logo_svg_refused", 415),
        (b"GIF89a" + b"\x00" * 50, "logo_unreadable", 422),
        (b"", "logo_unreadable", 422),
        (png()[:40], "logo_unreadable", 422),  # cut off
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "logo_unreadable", 422),  # corrupt
        (b"\xff\xd8\xff" + b"garbage" * 20, "logo_unreadable", 422),
        (png_bomb(), "logo_too_many_pixels", 422),
        (png_bomb(4000, 16), "logo_too_many_pixels", 422),  # one side too long
        (b"\x89PNG" + b"\x00" * (256 * 1024), "logo_too_large", 413),
    ],
    ids=["svg", "svg-leading-space", "gif", "empty", "cut", "corrupt-png", "corrupt-jpeg",
         "bomb", "too-wide", "too-many-bytes"],
)  # fmt: skip
def test_refused_logos(data, code, status):
    with pytest.raises(branding.BrandingRefused) as info:
        branding.process_logo(data)
    assert (info.value.code, info.value.status) == (code, status)


def test_the_bomb_is_refused_before_decoding(monkeypatch):
    """The pixel bound is checked from the header: the image is never loaded."""
    loaded = []
    real_load = Image.Image.load

    def spy(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    from PIL import PngImagePlugin

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", spy)
    with pytest.raises(branding.BrandingRefused):
        branding.process_logo(png_bomb())
    assert loaded == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("mail_from_name", "Acme\r\nBcc: victim@example.com"),
        ("mail_from_name", "Acme\u202egnp.exe"),
        ("mail_from_name", "x" * 101),
        ("mail_from_name", "   "),
        ("support_email", "help@example.com\r\nBcc: x@example.com"),
        ("support_email", "a@b.c, d@e.f"),
        ("support_url", "javascript:alert(1)"),
        ("support_url", "https://user:pw@example.com/"),
        ("support_url", "https://example.com/help#x"),
        ("support_url", "https://example.com/he lp"),
        ("support_url", "https://example.com/x'\"><script>"),
        ("support_url", "https://example.com/%zz"),
        ("brand_color", "red"),
        ("brand_color", "#12345"),
        ("display_name", "Acme\u200b"),
        ("display_name", "\ud800"),
    ],
)
def test_bad_brand_fields_are_refused_by_the_api(app, api, field, value):
    resp = api.http.put("/api/v1/branding", json={field: value}, headers=api.headers)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["code"] == "invalid_field" and resp.get_json()["field"] == field


# -- the API ----------------------------------------------------------------------------


def test_get_and_put_branding(app, api):
    resp = api.http.get("/api/v1/branding", headers=api.headers)
    assert resp.status_code == 200
    assert resp.get_json() == {
        "display_name": "Acme",
        "brand_color": None,
        "button_text_color": None,
        "support_url": None,
        "support_email": None,
        "mail_from_name": None,
        "logo_url": None,
    }
    new = {
        "display_name": "Acme Cloud",
        "brand_color": "#FFD700",
        "support_url": "https://acme.example/help",
        "support_email": "help@acme.example",
        "mail_from_name": "Acme Sign-in",
    }
    resp = api.http.put("/api/v1/branding", json=new, headers=api.headers)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body == {
        **new,
        "brand_color": "#ffd700",
        "button_text_color": "#1b1f24",
        "logo_url": None,
    }
    # absent members stay, null clears
    resp = api.http.put("/api/v1/branding", json={"support_url": None}, headers=api.headers)
    assert resp.get_json()["support_url"] is None
    assert resp.get_json()["support_email"] == "help@acme.example"
    resp = api.http.put("/api/v1/branding", json={"display_name": None}, headers=api.headers)
    assert resp.status_code == 422
    resp = api.http.put("/api/v1/branding", json={}, headers=api.headers)  # nothing to change
    assert resp.status_code == 200 and resp.get_json()["support_email"] == "help@acme.example"


def test_low_contrast_colour_is_refused_with_its_ratio(app, api):
    resp = api.http.put("/api/v1/branding", json={"brand_color": "#777777"}, headers=api.headers)
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["code"] == "brand_color_low_contrast" and body["field"] == "brand_color"
    assert "4.47:1" in body["detail"] and "4.5:1" in body["detail"]
    assert api.http.get("/api/v1/branding", headers=api.headers).get_json()["brand_color"] is None


def test_logo_upload_serves_at_a_content_hashed_url(app, api, client):
    raw = png(120, 40)
    resp = api.http.put(
        "/api/v1/branding/logo", data=raw, content_type="image/png", headers=api.headers
    )
    assert resp.status_code == 200, resp.get_json()
    url = resp.get_json()["logo_url"]
    m = re.fullmatch(
        r"http://127\.0\.0\.1:8000(/branding/cl_[0-9a-f]{16}/logo-([0-9a-f]{64})\.png)", url
    )
    assert m, url
    got = client.get(m.group(1))
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert hashlib.sha256(got.data).hexdigest() == m.group(2)
    assert got.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    # another hash, or another client's id with this hash: nothing
    assert client.get(m.group(1).replace(m.group(2), "0" * 64)).status_code == 404
    other = make_api_user(app, "initech", display_name="Initech")
    assert client.get(m.group(1).replace(api.client.id, other.client.id)).status_code == 404
    # removed: gone (this worker forgets at once; others within seconds)
    resp = api.http.delete("/api/v1/branding/logo", headers=api.headers)
    assert resp.status_code == 200 and resp.get_json()["logo_url"] is None
    assert client.get(m.group(1)).status_code == 404


@pytest.mark.parametrize(
    "data,content_type,status,code",
    [
        (SVG, "image/svg+xml", 415, "logo_svg_refused"),
        (SVG, "image/png", 415, "logo_svg_refused"),  # SVG claiming to be a PNG
        (png(), "text/html", 415, "logo_unsupported_type"),
        (png(), "application/json", 415, "logo_unsupported_type"),
        (b"not an image", "image/png", 422, "logo_unreadable"),
        (png_bomb(), "image/png", 422, "logo_too_many_pixels"),
        (b"\x89PNG" + b"0" * (256 * 1024), "image/png", 413, "logo_too_large"),
    ],
    ids=["svg", "svg-as-png", "html", "json", "junk", "bomb", "too-large"],
)
def test_logo_refusals_over_http(app, api, data, content_type, status, code):
    resp = api.http.put(
        "/api/v1/branding/logo", data=data, content_type=content_type, headers=api.headers
    )
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["code"] == code
    assert resp.mimetype == "application/problem+json"
    with db.read(services(app).links.engine) as conn:
        assert branding.load_logo(conn, api.client.id) is None


def test_exif_comes_back_without_it_over_http(app, api, client):
    resp = api.http.put(
        "/api/v1/branding/logo",
        data=jpeg_with_exif(),
        content_type="image/jpeg",
        headers=api.headers,
    )
    assert resp.status_code == 200, resp.get_json()
    path = resp.get_json()["logo_url"].split("8000", 1)[1]
    assert path.endswith(".jpg")
    data = client.get(path).data
    assert data.startswith(b"\xff\xd8") and b"Exif" not in data and b"SecretCam" not in data


def test_a_client_reaches_only_its_own_branding(app, api, other_api):
    """There is no client in the path: the API key alone says whose branding it is."""
    api.http.put("/api/v1/branding", json={"brand_color": "#b00020"}, headers=api.headers)
    api.http.put("/api/v1/branding/logo", data=png(), content_type="image/png", headers=api.headers)
    theirs = other_api.http.get("/api/v1/branding", headers=other_api.headers).get_json()
    assert theirs["brand_color"] is None and theirs["logo_url"] is None
    assert theirs["display_name"] == "Globex"
    # B changes and removes its own: A's stay
    other_api.http.put(
        "/api/v1/branding", json={"brand_color": "#0f766e"}, headers=other_api.headers
    )
    other_api.http.delete("/api/v1/branding/logo", headers=other_api.headers)
    mine = api.http.get("/api/v1/branding", headers=api.headers).get_json()
    assert mine["brand_color"] == "#b00020" and mine["logo_url"] is not None
    # no key, a wrong key, a disabled client: nothing read or written
    assert api.http.get("/api/v1/branding").status_code == 401
    bad = {"Authorization": "Bearer lsk_" + "A" * 43}
    assert (
        api.http.put("/api/v1/branding", json={"brand_color": "#000000"}, headers=bad).status_code
        == 401
    )
    assert (
        api.http.put(
            "/api/v1/branding/logo", data=png(), content_type="image/png", headers=bad
        ).status_code
        == 401
    )
    assert api.http.delete("/api/v1/branding/logo", headers=bad).status_code == 401
    # the other client's id cannot be smuggled in the body
    resp = other_api.http.put(
        "/api/v1/branding",
        json={"client_id": api.client.id, "brand_color": "#000000"},
        headers=other_api.headers,
    )
    assert resp.status_code == 422 and resp.get_json()["code"] == "unknown_field"
    assert (
        api.http.get("/api/v1/branding", headers=api.headers).get_json()["brand_color"] == "#b00020"
    )


# -- pages ------------------------------------------------------------------------------


def _brand(api, color="#b00020", **extra):
    resp = api.http.put(
        "/api/v1/branding", json={"brand_color": color, **extra}, headers=api.headers
    )
    assert resp.status_code == 200, resp.get_json()
    resp = api.http.put(
        "/api/v1/branding/logo", data=png(), content_type="image/png", headers=api.headers
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_pages_carry_their_clients_stylesheet_logo_and_support(app, api, other_api, client):
    mine = _brand(api, support_url="https://acme.example/help", support_email="help@acme.example")
    theirs = _brand(other_api, "#0f766e")
    link = api.minted()
    page = client.get(_path(link["url"]))
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    logo_path = _path(mine["logo_url"])
    assert f'src="{logo_path}"' in html and _path(theirs["logo_url"]) not in html
    css_href = re.search(r'id="brand-style" href="([^"]+)"', html).group(1)
    assert re.fullmatch(rf"/branding/{api.client.id}/style-[0-9a-f]{{16}}\.css", css_href)
    css = client.get(css_href)
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert css.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "#b00020" in css.get_data(as_text=True) and "#0f766e" not in css.get_data(as_text=True)
    # the CSP is unchanged: the stylesheet and the logo are files of this origin, nothing inline
    assert "style-src 'self';" in page.headers["Content-Security-Policy"]
    assert "style=" not in html and "<style" not in html
    # a stale stylesheet hash, or another client's id with this hash: nothing
    assert client.get(css_href.replace("style-", "style-0")).status_code == 404
    assert client.get(css_href.replace(api.client.id, other_api.client.id)).status_code == 404
    # the failure page after use names the support contact
    api.redeem(link["token"])
    failed = client.get(_path(link["url"])).get_data(as_text=True)
    assert 'id="support-url" href="https://acme.example/help"' in failed
    assert 'href="mailto:help@acme.example"' in failed and logo_path in failed
    # a forged link's page knows no client: no brand at all
    forged = client.get("/l/" + "A" * 40).get_data(as_text=True)
    assert 'id="brand' not in forged and "/branding/" not in forged


def test_a_change_shows_without_a_restart(app, api, client):
    link = api.minted()
    assert 'id="brand-style"' not in client.get(_path(link["url"])).get_data(as_text=True)
    api.http.put("/api/v1/branding", json={"brand_color": "#0f766e"}, headers=api.headers)
    assert 'id="brand-style"' in client.get(_path(link["url"])).get_data(as_text=True)


# -- mail -------------------------------------------------------------------------------


def _mail(app, jti) -> email.message.EmailMessage:
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    path = next(p for p in outbox.glob("*.eml") if jti in p.name)
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_mail_from_name_reply_to_and_inline_logo(app, api):
    _brand(api, "#ffd700", support_email="help@acme.example", mail_from_name="Acmé Sign-in")
    link = api.minted(email=ADDRESS)
    msg = _mail(app, link["jti"])
    sender = msg["From"].addresses[0]
    assert sender.display_name == "Acmé Sign-in"
    assert sender.addr_spec == app.config["LINKSVC"].mail_from.split("<")[-1].strip(">")
    assert msg["Reply-To"].addresses[0].addr_spec == "help@acme.example"
    raw = _raw_mail(app, link["jti"])
    assert "=?utf-8?" in raw.split("\n\n", 1)[0].lower()  # encoded, not raw 8-bit
    html_part = msg.get_body(("html",))
    assert html_part is not None
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    assert related.get_payload()[0].get_content_type() == "text/html"
    image = next(p for p in msg.walk() if p.get_content_maintype() == "image")
    cid = image["Content-ID"].strip("<>")
    assert image.get_content_disposition() == "inline"
    html = html_part.get_content()
    assert f'src="cid:{cid}"' in html
    assert "http" not in re.search(r"<img[^>]+>", html).group(0)  # nothing fetched
    assert (
        hashlib.sha256(image.get_content()).hexdigest().startswith(cid.split(".")[1].split("@")[0])
    )
    # the brand colour on the button, with the dark text it needs
    assert re.search(r'class="button-cell"[^>]*style="[^"]*background: #ffd700', html)
    assert re.search(r'class="button"[^>]*style="[^"]*color: #1b1f24', html)
    assert 'href="mailto:help@acme.example"' in html
    text = msg.get_body(("plain",)).get_content()
    assert "help@acme.example" in text


def _raw_mail(app, jti) -> str:
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    return next(p for p in outbox.glob("*.eml") if jti in p.name).read_text()


def test_mail_without_branding_keeps_the_operators_name_and_no_reply_to(app, api):
    link = api.minted(email=ADDRESS)
    msg = _mail(app, link["jti"])
    assert msg["From"].addresses[0].display_name == "Acme"  # the display name
    assert msg["Reply-To"] is None
    assert msg.get_content_type() == "multipart/alternative"
    assert not any(p.get_content_maintype() == "image" for p in msg.walk())


def test_another_clients_mail_carries_nothing_of_the_first(app, api, other_api):
    _brand(api, support_email="help@acme.example", mail_from_name="Acme Sign-in")
    link = other_api.minted(email=ADDRESS)
    raw = _raw_mail(app, link["jti"])
    assert "Acme" not in raw and "help@acme.example" not in raw and "#b00020" not in raw


# -- the command line -------------------------------------------------------------------


def test_cli_update_sets_and_clears_branding(app, api, runner, tmp_path):
    logo = tmp_path / "logo.jpg"
    logo.write_bytes(jpeg_with_exif())
    result = runner.invoke(
        args=[
            "clients", "update", "acme", "--logo", str(logo), "--brand-color", "#0F766E",
            "--support-url", "https://acme.example/help", "--support-email", "help@acme.example",
            "--mail-from-name", "Acme", "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    shown = json.loads(result.output)
    assert shown["brand_color"] == "#0f766e" and shown["support_email"] == "help@acme.example"
    with db.read(services(app).links.engine) as conn:
        stored = branding.load_logo(conn, api.client.id)
    assert stored is not None and b"SecretCam" not in stored.data
    result = runner.invoke(args=["clients", "update", "acme", "--clear-logo", "--brand-color", ""])
    assert result.exit_code == 0, result.output
    with db.read(services(app).links.engine) as conn:
        assert branding.load_logo(conn, api.client.id) is None
    assert api.http.get("/api/v1/branding", headers=api.headers).get_json()["brand_color"] is None


def test_cli_refusals_name_the_rule(app, api, runner, tmp_path):
    svg = tmp_path / "logo.svg"
    svg.write_bytes(SVG)
    result = runner.invoke(args=["clients", "update", "acme", "--logo", str(svg)])
    assert result.exit_code != 0 and "logo_svg_refused" in result.output
    result = runner.invoke(args=["clients", "update", "acme", "--brand-color", "#777777"])
    assert result.exit_code != 0 and "4.47:1" in result.output
    result = runner.invoke(
        args=["clients", "update", "acme", "--mail-from-name", "A\nBcc: x@example.com"]
    )
    assert result.exit_code != 0 and "control" in result.output
    result = runner.invoke(args=["clients", "update", "acme", "--logo", str(svg), "--clear-logo"])
    assert result.exit_code != 0


def test_cli_create_takes_the_brand(app, runner, tmp_path):
    logo = tmp_path / "logo.png"
    logo.write_bytes(png())
    result = runner.invoke(
        args=["clients", "create", "brandco", "--redirect-uri", "https://brand.example/cb",
              "--logo", str(logo), "--brand-color", "#0b57d0", "--mail-from-name", "BrandCo",
              "--json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    created = json.loads(result.output)
    assert created["brand_color"] == "#0b57d0" and created["mail_from_name"] == "BrandCo"
    with db.read(services(app).links.engine) as conn:
        assert branding.load_logo(conn, created["client_id"]) is not None


def test_the_python_client_sets_and_reads_branding(app, api):
    import httpx

    from linksvc_client import InvalidRequest, LinkClient

    http = httpx.Client(transport=httpx.WSGITransport(app=app))
    with LinkClient("http://127.0.0.1:8000", api.api_key, http=http) as lc:
        got = lc.set_branding(brand_color="#0F766E", support_email="help@acme.example")
        assert got.brand_color == "#0f766e" and got.button_text_color == "#ffffff"
        assert lc.set_branding(support_email=None).support_email is None
        assert lc.get_branding().brand_color == "#0f766e"  # left out: kept
        with_logo = lc.set_logo(jpeg_with_exif(), "image/jpeg")
        assert with_logo.logo_url is not None and with_logo.logo_url.endswith(".jpg")
        with pytest.raises(InvalidRequest) as info:
            lc.set_branding(brand_color="#777777")
        assert info.value.code == "brand_color_low_contrast" and info.value.status == 422
        with pytest.raises(InvalidRequest) as info:
            lc.set_logo(SVG, "image/svg+xml")
        assert info.value.code == "logo_svg_refused" and info.value.status == 415
        assert lc.delete_logo().logo_url is None
