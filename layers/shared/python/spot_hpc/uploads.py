"""The ingest bucket as the control plane reads it: an upload's metadata, and the manifest that may sit beside it."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from spot_checkpoint.store import key_listed

# Errors that mean the object cannot be read at all (gone, never there, not ours to read, or a delete marker: S3
# answers a HEAD of a marker's version with 405); anything else, such as throttling, is raised for the handler to retry.
UNREADABLE_CODES = frozenset(
    {"404", "NoSuchKey", "NoSuchBucket", "NoSuchVersion", "403", "AccessDenied", "405", "MethodNotAllowed"}
)


class UploadUnreadable(Exception):
    """The uploaded object cannot be read; `code` is S3's error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class UploadTooLarge(Exception):
    """The object is longer than the caller reads."""


class UploadBucket:
    """Reads uploads with an injectable S3 client."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def head(self, bucket: str, key: str, version_id: str | None) -> dict[str, Any]:
        """The object's metadata (that exact version when given); `UploadUnreadable` when it cannot be read."""
        kwargs = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        try:
            return self._s3.head_object(**kwargs)  # type: ignore[no-any-return]
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in UNREADABLE_CODES:
                raise UploadUnreadable(code) from exc
            raise

    def read_small(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        """A small object that may not exist (None then, also when S3 refuses its read and it is not listed);
        `UploadTooLarge` when it is longer than `max_bytes`.

        One ranged read of `max_bytes` + 1 bytes (the range is inclusive): the extra byte tells an object over the
        limit from one exactly at it, without reading the rest."""
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")["Body"]
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("NoSuchKey", "404"):
                return None
            if code == "InvalidRange":  # S3's answer to any ranged read of an empty object
                return b""
            if code in ("AccessDenied", "403") and not key_listed(self._s3, bucket, key):  # the uploads' prefix only
                return None
            raise
        raw: bytes = body.read()
        if len(raw) > max_bytes:
            raise UploadTooLarge(f"longer than {max_bytes} bytes")
        return raw
