"""Each client's face: brand colour, logo, support contact and the mail's sender name.

Pure rules and storage, no Flask: what a brand colour may be (its button text must reach
WCAG AA contrast), the per-client stylesheet it becomes, how an uploaded logo is checked and
re-encoded, and where logos are kept (``client_logos``, out of the hot ``clients`` row).
:mod:`linksvc.web.branding` serves the stylesheet and logo and hands them to templates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import re
import time
import unicodedata
from collections.abc import Callable
from urllib.parse import urlsplit

import sqlalchemy as sa
from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy.engine import Connection

from linksvc.store import db

#: An uploaded logo's size limits: bytes, and pixels (checked from the header, before a
#: single pixel is decoded: a few KiB of PNG can inflate to gigabytes).
MAX_LOGO_BYTES = 256 * 1024
MAX_LOGO_SIDE = 2048
MAX_LOGO_PIXELS = 2048 * 2048
#: The re-encoded logo's longer side at most: pages show it 48 px high (96 on dense screens),
#: so a larger one only costs bytes in every mail.
STORED_LOGO_SIDE = 512

#: Button text colours: white, or the pages' near-black text, whichever contrasts better.
LIGHT_TEXT = "#ffffff"
DARK_TEXT = "#1b1f24"
#: WCAG 2.x AA for normal text.
MIN_CONTRAST = 4.5

_COLOR_RE = re.compile(r"#[0-9A-Fa-f]{6}")
# The same plain address linksvc sends to (linksvc.mail.delivery): nothing that could smuggle a
# header or a second recipient into Reply-To.
_ADDRESS_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+"
)


#: What RFC 3986 allows in a URI (ASCII, no space, no fragment, well-formed %-escapes): the
#: support URL is written into pages and mails as it is.
_URI_CHARS_RE = re.compile(r"([A-Za-z0-9._~!$&'()*+,;=:@/?\[\]-]|%[0-9A-Fa-f]{2})+")


class BrandingRefused(ValueError):
    """A brand setting or logo linksvc will not take: a stable ``code``, the HTTP ``status``
    it maps to, the ``field`` at fault and a message saying the rule."""

    def __init__(self, code: str, detail: str, *, status: int = 422, field: str | None = None):
        super().__init__(detail)
        self.code, self.detail, self.status, self.field = code, detail, status, field


# -- colour ---------------------------------------------------------------------------


def _channel(c: int) -> float:
    s = c / 255
    return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4


def luminance(color: str) -> float:
    """WCAG relative luminance of ``#rrggbb``."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours, 1 to 21."""
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def button_text(color: str) -> tuple[str, float]:
    """The text colour for a button of ``color`` (white or near-black, the better) and its
    contrast ratio."""
    light, dark = contrast(color, LIGHT_TEXT), contrast(color, DARK_TEXT)
    return (LIGHT_TEXT, light) if light >= dark else (DARK_TEXT, dark)


def _ratio(r: float) -> str:
    # Rounded down: 4.497 must not read as the 4.50 it fails to reach.
    return f"{math.floor(r * 100) / 100:.2f}:1"


def validate_brand_color(value: str | None) -> str | None:
    """``#rrggbb`` (lower case) or ``None``; refused when no button text reaches 4.5:1."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _COLOR_RE.fullmatch(value):
        raise BrandingRefused(
            "invalid_field", "brand colour must be #RRGGBB, e.g. #0b57d0", field="brand_color"
        )
    color = value.lower()
    text, ratio = button_text(color)
    if ratio < MIN_CONTRAST:
        raise BrandingRefused(
            "brand_color_low_contrast",
            f"brand colour {color} gives its button text a contrast of {_ratio(ratio)} at best "
            f"(with {text}); WCAG AA needs {MIN_CONTRAST}:1 — choose a darker or lighter colour",
            field="brand_color",
        )
    return color


def _mix(color: str, other: str, share: float) -> str:
    a = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(other[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b, strict=True))


@functools.lru_cache(maxsize=1024)
def stylesheet(color: str) -> tuple[str, str]:
    """The per-client stylesheet for brand colour ``color`` and its content hash (the URL's
    name, so it can be cached for a year). Loaded after linksvc.css, it overrides colours only.

    Hover moves away from the text colour, so the contrast only grows; a secondary button
    (white) takes the brand colour for its text only where that colour is legible on white."""
    text, _ = button_text(color)
    hover = _mix(color, "#000000", 0.15) if text == LIGHT_TEXT else _mix(color, "#ffffff", 0.2)
    secondary = color if contrast(color, "#ffffff") >= MIN_CONTRAST else DARK_TEXT
    css = (
        "/* linksvc: a client's brand colour (generated) */\n"
        f".card {{ border-top: 4px solid {color}; }}\n"
        f"button, a.button {{ background: {color}; color: {text}; }}\n"
        f"button:hover, a.button:hover {{ background: {hover}; }}\n"
        "button.secondary, a.button.secondary "
        f"{{ background: #fff; color: {secondary}; border-color: {color}; }}\n"
        "button.secondary:hover, a.button.secondary:hover { background: #f4f5f7; }\n"
    )
    return css, hashlib.sha256(css.encode()).hexdigest()[:16]


# -- support contact and sender name ---------------------------------------------------


def validate_support_url(uri: str | None, *, allow_http: bool) -> str | None:
    """An absolute http(s) URL without credentials or fragment (shown to users as a link)."""
    if uri is None or uri == "":
        return None
    parts = urlsplit(uri)
    bad = (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.fragment
        or parts.username
        or parts.password
        or len(uri) > 2000
        or not _URI_CHARS_RE.fullmatch(uri)
    )
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if bad or (parts.scheme == "http" and not (allow_http or local)):
        raise BrandingRefused(
            "invalid_field",
            "support URL must be an absolute https URL without credentials or fragment",
            field="support_url",
        )
    return uri


def validate_support_email(address: str | None) -> str | None:
    if address is None or address == "":
        return None
    if len(address) > 254 or not _ADDRESS_RE.fullmatch(address):
        raise BrandingRefused(
            "invalid_field",
            "support e-mail must be a plain address (help@example.com)",
            field="support_email",
        )
    return address


def validate_mail_from_name(name: str | None) -> str | None:
    """The From header's display name: 1-100 characters, no control characters (CR/LF would
    start a header of its own) and no format characters (bidi overrides)."""
    if name is None or name == "":
        return None
    if not name.strip() or len(name) > 100:
        raise BrandingRefused(
            "invalid_field", "mail sender name must be 1-100 characters", field="mail_from_name"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise BrandingRefused(
            "invalid_field",
            "mail sender name must not contain control or format characters (line breaks, bidi)",
            field="mail_from_name",
        )
    return name


# -- logos ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Logo:
    """A re-encoded logo: only what Pillow drew, no metadata, nothing appended."""

    sha256: str
    content_type: str
    data: bytes

    @property
    def extension(self) -> str:
        return "jpg" if self.content_type == "image/jpeg" else "png"


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


def _sniff(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _looks_like_svg(data: bytes) -> bool:
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<svg", b"<?xml", b"<!doctype svg", b"<!--")) or b"<svg" in head


def process_logo(data: bytes) -> Logo:
    """Check and re-encode an uploaded logo (PNG, JPEG or WebP, at most 256 KiB and
    2048×2048 pixels): JPEG stays JPEG, the others become PNG (which every mail program shows).
    EXIF, ICC profiles, text chunks and anything after the image are dropped; EXIF rotation is
    applied first, so the logo still stands upright. Raises :class:`BrandingRefused`."""
    if len(data) > MAX_LOGO_BYTES:
        raise BrandingRefused(
            "logo_too_large",
            f"a logo must be at most {MAX_LOGO_BYTES // 1024} KiB; this one is {len(data)} bytes",
            status=413,
        )
    if _looks_like_svg(data):
        # An SVG is a document that can carry script and fetch resources; never served.
        raise BrandingRefused(
            "logo_svg_refused", "SVG logos are not accepted: send PNG, JPEG or WebP", status=415
        )
    fmt = _sniff(data)
    if fmt is None:
        raise BrandingRefused(
            "logo_unreadable", "the logo is not a PNG, JPEG or WebP image (by its content)"
        )
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            if width > MAX_LOGO_SIDE or height > MAX_LOGO_SIDE or width * height > MAX_LOGO_PIXELS:
                raise BrandingRefused(
                    "logo_too_many_pixels",
                    f"a logo must be at most {MAX_LOGO_SIDE}×{MAX_LOGO_SIDE} pixels; "
                    f"this one is {width}×{height}",
                )
            im.seek(0)  # an animated image: its first frame
            im.load()
            upright = ImageOps.exif_transpose(im)
            has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
            if fmt == "JPEG":
                out_img, out_fmt, ctype = upright.convert("RGB"), "JPEG", "image/jpeg"
            else:
                mode = "RGBA" if has_alpha else "RGB"
                out_img, out_fmt, ctype = upright.convert(mode), "PNG", "image/png"
    except BrandingRefused:
        raise
    except Image.DecompressionBombError:
        # Pillow's own bound (far above ours) fired while reading the header.
        raise BrandingRefused(
            "logo_too_many_pixels",
            f"a logo must be at most {MAX_LOGO_SIDE}×{MAX_LOGO_SIDE} pixels",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            EOFError, IndexError, TypeError, MemoryError) as exc:  # fmt: skip
        raise BrandingRefused(
            "logo_unreadable", f"the logo could not be decoded as {fmt} ({type(exc).__name__})"
        ) from None
    out_img.thumbnail((STORED_LOGO_SIDE, STORED_LOGO_SIDE), Image.Resampling.LANCZOS)
    # Pixels only, into a fresh image: the decoded one keeps its metadata in ``info`` (a
    # JPEG comment, an ICC profile, PNG text), which Pillow writes out again when saving.
    out_img = Image.frombytes(out_img.mode, out_img.size, out_img.tobytes())
    buf = io.BytesIO()
    if out_fmt == "JPEG":
        out_img.save(buf, "JPEG", quality=90, optimize=True)
    else:
        out_img.save(buf, "PNG", optimize=True)
    encoded = buf.getvalue()
    return Logo(hashlib.sha256(encoded).hexdigest(), ctype, encoded)


def save_logo(conn: Connection, client_id: str, logo: Logo, *, now: int) -> None:
    t = db.client_logos
    conn.execute(sa.delete(t).where(t.c.client_id == client_id))
    conn.execute(
        sa.insert(t).values(
            client_id=client_id,
            sha256=logo.sha256,
            content_type=logo.content_type,
            data=logo.data,
            updated_at=now,
        )
    )


def clear_logo(conn: Connection, client_id: str) -> bool:
    """Remove a client's logo; whether it had one."""
    t = db.client_logos
    return bool(conn.execute(sa.delete(t).where(t.c.client_id == client_id)).rowcount)


def load_logo(conn: Connection, client_id: str) -> Logo | None:
    t = db.client_logos
    row = conn.execute(
        sa.select(t.c.sha256, t.c.content_type, t.c.data).where(t.c.client_id == client_id)
    ).first()
    return None if row is None else Logo(row.sha256, row.content_type, bytes(row.data))


class LogoCache:
    """client id → its logo (or that it has none), kept ``seconds`` in one process: pages and
    mails of a client read it without a query each; a new logo shows within that bound, as a
    changed client does (:class:`linksvc.clients.registry.ClientCache`). At most ``max_entries``."""

    def __init__(
        self,
        seconds: float = 5.0,
        max_entries: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds, self.max_entries, self.clock = seconds, max_entries, clock
        self._entries: dict[str, tuple[float, Logo | None]] = {}

    def get(self, conn_factory: Callable[[], Logo | None], client_id: str) -> Logo | None:
        entry = self._entries.get(client_id)
        if entry is not None and self.clock() < entry[0]:
            return entry[1]
        logo = conn_factory()
        if self.seconds > 0:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[client_id] = (self.clock() + self.seconds, logo)
        return logo

    def forget(self, client_id: str) -> None:
        self._entries.pop(client_id, None)
