"""Where download links point: local files or an S3 bucket, behind one small interface.

:class:`LocalStorage` (the embedded default) keeps files under a directory and hands out
its own short-lived grant URLs, signed with itsdangerous; :class:`S3Storage` presigns
SigV4 GET URLs with boto3. Neither knows Flask. botocore's exceptions are converted
here, at the boundary: an outage or missing credentials becomes
:class:`~linksvc.errors.ServiceUnavailable` (503, nothing consumed), a missing object
:class:`ObjectMissing`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

from linksvc import errors
from linksvc.config import ConfigError, Settings

#: S3's own limit on key length, applied to both backends.
MAX_KEY_BYTES = 1024
MAX_FILENAME_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*"
)
GRANT_SALT = "linksvc.download-grant"


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows of one stored object."""

    bucket: str | None
    key: str
    size: int | None
    etag: str | None


class ObjectMissing(Exception):
    """The object (or its bucket) does not exist."""


class GrantRefused(Exception):
    """A local grant URL that is forged (``reason='invalid'``) or past its window (``'expired'``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Storage(Protocol):
    """A storage backend: look an object up, and make a short-lived URL that fetches it."""

    kind: str
    default_bucket: str | None

    def stat(self, bucket: str | None, key: str) -> ObjectInfo:
        """The object's size and ETag; raises ObjectMissing, RequestRefused or ServiceUnavailable."""
        ...

    def presigned_url(
        self,
        info: ObjectInfo,
        *,
        jti: str,
        expires_in: int,
        disposition: str,
        content_type: str | None,
        now: int,
    ) -> str:
        """A URL that fetches the object for ``expires_in`` seconds, with these response headers."""
        ...


# -- names and headers --------------------------------------------------------------


def check_key(key: str) -> str:
    """Refuse keys that are not plain relative paths: no leading '/', no '..' or '.' or
    empty segments, no backslashes or control characters. Applied on S3 as well, because
    some S3-compatible servers and proxies normalise paths, which would defeat prefix checks."""
    if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise errors.RequestRefused(
            "invalid_key", f"download.key must be 1-{MAX_KEY_BYTES} bytes.", field="download.key"
        )
    if _CONTROL.search(key) or "\\" in key:
        raise errors.RequestRefused(
            "invalid_key",
            "download.key must not contain control characters or backslashes.",
            field="download.key",
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.RequestRefused(
            "invalid_key", "download.key must be valid Unicode.", field="download.key"
        ) from None
    if key.startswith("/") or re.match(r"[A-Za-z]:", key):
        raise errors.RequestRefused(
            "invalid_key", "download.key must be a relative path.", field="download.key"
        )
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise errors.RequestRefused(
            "invalid_key",
            "download.key must not contain '.', '..' or empty path segments.",
            field="download.key",
        )
    return key


def check_filename(filename: str) -> str:
    if not 1 <= len(filename) <= MAX_FILENAME_CHARS or filename.strip() != filename:
        raise errors.RequestRefused(
            "invalid_filename",
            f"download.filename must be 1-{MAX_FILENAME_CHARS} characters "
            "without leading or trailing spaces.",
            field="download.filename",
        )
    if _CONTROL.search(filename) or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise errors.RequestRefused(
            "invalid_filename",
            "download.filename must be a plain file name: no slashes or control characters.",
            field="download.filename",
        )
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.RequestRefused(
            "invalid_filename",
            "download.filename must be valid Unicode.",
            field="download.filename",
        ) from None
    # Format characters reorder or hide what is shown: "invoice\u202efdp.exe" reads as
    # "invoiceexe.pdf" on the confirmation page.
    if any(unicodedata.category(ch) == "Cf" for ch in filename):
        raise errors.RequestRefused(
            "invalid_filename",
            "download.filename must not contain format characters (bidi controls, "
            "zero-width characters, BOM).",
            field="download.filename",
        )
    return filename


def check_content_type(value: str) -> str:
    if len(value) > 200 or not _MEDIA_TYPE.fullmatch(value):
        raise errors.RequestRefused(
            "invalid_content_type",
            "download.content_type must be a media type such as 'application/pdf'.",
            field="download.content_type",
        )
    return value


# Characters kept in the ASCII fallback: RFC 6266 appendix D advises against '%' and '\',
# and quote marks or ';' inside it trip naive parsers.
_FALLBACK_SAFE = re.compile(r"[^A-Za-z0-9 !#$&'()+,\-.=@\[\]^_`{}~]")


def content_disposition(filename: str) -> str:
    """``attachment`` with the name per RFC 6266 / RFC 5987: an ASCII ``filename``
    fallback and, when that is not exact, ``filename*=UTF-8''…`` for the real name."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    fallback = _FALLBACK_SAFE.sub("_", ascii_name).strip() or "download"
    if fallback == filename:
        return f'attachment; filename="{fallback}"'
    # attr-char of RFC 5987: everything else percent-encoded from UTF-8.
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# -- local files --------------------------------------------------------------------


class LocalStorage:
    """Files under ``root``; grant URLs are ``{base_url}/dl/<signed grant>``.

    A grant carries only the link's ``jti`` and its own expiry: the file is found again
    from the ledger, so the URL reveals no path or name.
    """

    kind = "local"
    default_bucket = None

    def __init__(self, root: Path, *, base_url: str, secret_key: bytes | None) -> None:
        self.root = root
        self.base_url = base_url
        self.secret_key = secret_key

    def path(self, key: str) -> Path:
        """The file for ``key``, refusing anything that resolves outside the root
        (``..``, absolute paths, symlinks pointing out)."""
        check_key(key)
        root = self.root.resolve()
        try:
            target = (root / key).resolve(strict=False)
        except (OSError, RuntimeError):  # a symlink loop
            raise errors.RequestRefused(
                "invalid_key", "download.key does not resolve to a file.", field="download.key"
            ) from None
        if not target.is_relative_to(root) or target == root:
            raise errors.RequestRefused(
                "invalid_key",
                "download.key resolves outside the storage directory.",
                field="download.key",
            )
        return target

    def resolved_key(self, key: str) -> str:
        """``key`` as the file it resolves to, relative to the root (symlinks followed): what
        a client's download prefixes are checked against, at mint and when serving."""
        return self.path(key).relative_to(self.root.resolve()).as_posix()

    def stat(self, bucket: str | None, key: str) -> ObjectInfo:
        path = self.path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise errors.ServiceUnavailable(
                "storage", "The file store is unavailable; try again shortly."
            ) from exc
        if not path.is_file():
            raise ObjectMissing(key)
        return ObjectInfo(
            bucket=None, key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}"
        )

    def _serializer(self) -> URLSafeSerializer:
        if self.secret_key is None:
            raise errors.NotInitialised("secret key")
        return URLSafeSerializer(self.secret_key, salt=GRANT_SALT)

    def presigned_url(
        self,
        info: ObjectInfo,
        *,
        jti: str,
        expires_in: int,
        disposition: str,
        content_type: str | None,
        now: int,
    ) -> str:
        grant = self._serializer().dumps({"j": jti, "e": now + expires_in})
        return f"{self.base_url}/dl/{grant}"

    def open_grant(self, grant: str, *, now: int) -> str:
        """The ``jti`` a grant was made for; raises GrantRefused."""
        if len(grant) > 512:
            raise GrantRefused("invalid")
        try:
            payload: Any = self._serializer().loads(grant)
        except BadSignature:
            raise GrantRefused("invalid") from None
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("j"), str)
            or type(payload.get("e")) is not int
        ):
            raise GrantRefused("invalid")
        if now > payload["e"]:
            raise GrantRefused("expired")
        return str(payload["j"])


# -- S3 -------------------------------------------------------------------------------

_MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class S3Storage:
    """Objects in S3 or an S3-compatible store (MinIO, Ceph, R2 …), presigned with SigV4."""

    kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str | None,
        addressing_style: str,
        client: Any = None,
    ) -> None:
        self.default_bucket = bucket
        if client is None:
            import boto3
            from botocore.config import Config

            # SigV4 always: boto3 still signs presigned URLs with SigV2 in some set-ups.
            # Short timeouts and few retries: a download click should fail fast, not hang a worker.
            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                connect_timeout=3,
                read_timeout=5,
                retries={"max_attempts": 2, "mode": "standard"},
            )
            from botocore.exceptions import BotoCoreError

            try:
                client = boto3.session.Session().client(
                    "s3", endpoint_url=endpoint_url, region_name=region, config=config
                )
            except (BotoCoreError, ValueError) as exc:  # a bad AWS_PROFILE, region or endpoint
                raise ConfigError(
                    "LINKSVC_STORAGE", f"cannot set up the S3 client: {exc}"
                ) from None
        self.client = client

    def stat(self, bucket: str | None, key: str) -> ObjectInfo:
        from botocore import exceptions as bexc

        bucket = bucket or self.default_bucket
        check_key(key)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except bexc.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ObjectMissing(key) from None
            if code in _DENIED_CODES:
                raise errors.RequestRefused(
                    "storage_access_denied",
                    "The object store refused access to this object with linksvc's credentials.",
                    kind="bad_gateway",
                    field="download",
                ) from None
            raise errors.ServiceUnavailable(
                "storage", "The object store is unavailable; try again shortly."
            ) from exc
        except bexc.ParamValidationError:
            raise errors.RequestRefused(
                "invalid_key",
                "download.key or bucket is not acceptable to the object store.",
                field="download",
            ) from None
        except (bexc.BotoCoreError, OSError) as exc:  # connection, credentials, timeouts
            raise errors.ServiceUnavailable(
                "storage", "The object store is unavailable; try again shortly."
            ) from exc
        return ObjectInfo(
            bucket=bucket, key=key, size=head.get("ContentLength"), etag=head.get("ETag")
        )

    def presigned_url(
        self,
        info: ObjectInfo,
        *,
        jti: str,
        expires_in: int,
        disposition: str,
        content_type: str | None,
        now: int,
    ) -> str:
        from botocore import exceptions as bexc

        params = {
            "Bucket": info.bucket or self.default_bucket,
            "Key": info.key,
            "ResponseContentDisposition": disposition,
        }
        if content_type:
            params["ResponseContentType"] = content_type
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object", Params=params, ExpiresIn=expires_in, HttpMethod="GET"
                )
            )
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise errors.ServiceUnavailable(
                "storage", "Could not sign a download URL; try again shortly."
            ) from exc


def from_settings(settings: Settings) -> LocalStorage | S3Storage:
    """The backend named by ``LINKSVC_STORAGE``."""
    if settings.storage == "s3":
        assert settings.s3_bucket is not None  # config refuses s3 without a bucket
        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
        )
    return LocalStorage(
        settings.storage_dir, base_url=settings.base_url, secret_key=settings.secret_key
    )


def file_path_for_serving(storage: LocalStorage, key: str) -> Path:
    """Re-check the path when serving: a file swapped for a symlink after minting is refused.
    The path returned is the resolved one, so what is served is the file that was checked."""
    path = storage.path(key)
    if not path.is_file():
        raise ObjectMissing(key)
    return path


__all__ = [
    "GrantRefused",
    "LocalStorage",
    "ObjectInfo",
    "ObjectMissing",
    "S3Storage",
    "Storage",
    "check_content_type",
    "check_filename",
    "check_key",
    "content_disposition",
    "file_path_for_serving",
    "from_settings",
]
