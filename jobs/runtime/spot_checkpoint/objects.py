"""Small S3 object helpers the example jobs and the drill share (inputs and outputs, not checkpoints)."""

from __future__ import annotations

from typing import IO, Any

from .errors import InputError
from .store import MISSING_BUCKET_CODES, error_code, parse_s3_uri

_MISSING_OBJECT_CODES = {"NoSuchKey", "NoSuchVersion"}


def _bucket_and_key(uri: str) -> tuple[str, str]:
    """:func:`parse_s3_uri`, with a URI it cannot read an :class:`InputError`: a job's inputs and outputs come from its
    environment, and a wrong one is told in one line (exit 1), not as a ValueError's traceback."""
    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def join_uri(prefix_uri: str, name: str) -> str:
    """``s3://b/p`` + ``x/y`` -> ``s3://b/p/x/y``."""
    return f"{prefix_uri.rstrip('/')}/{name.lstrip('/')}"


def open_object(s3_client: Any, uri: str, version_id: str | None = None) -> Any:
    """The object's body as a stream to ``read(size)`` piece by piece, for an object too large to hold in memory;
    ``version_id`` pins one version of it (a later upload under the same key is not read).

    An object (or version) that does not exist, or a bucket that is missing or not accessible, raises
    :class:`InputError`: the job's input is not there, which no retry changes.
    """
    bucket, key = _bucket_and_key(uri)
    version = {"VersionId": version_id} if version_id else {}
    try:
        return s3_client.get_object(Bucket=bucket, Key=key.rstrip("/"), **version)["Body"]
    except Exception as exc:
        code = error_code(exc)
        where = f"{uri} (version {version_id})" if version_id else uri
        if code in _MISSING_OBJECT_CODES:
            raise InputError(f"{where} does not exist ({code})") from None
        if code in MISSING_BUCKET_CODES:
            raise InputError(f"{where} cannot be read ({code}): check the URI and the job role") from None
        raise


def read_object(s3_client: Any, uri: str, version_id: str | None = None) -> bytes:
    """The object's bytes; ``version_id`` as for :func:`open_object`."""
    return bytes(open_object(s3_client, uri, version_id).read())


def write_object(
    s3_client: Any, uri: str, body: bytes | IO[bytes], content_type: str = "application/octet-stream"
) -> None:
    """``body`` is bytes, or a binary file that is sent from its current position to its end without being loaded."""
    bucket, key = _bucket_and_key(uri)
    s3_client.put_object(Bucket=bucket, Key=key.rstrip("/"), Body=body, ContentType=content_type)


def list_keys(s3_client: Any, prefix_uri: str) -> list[str]:
    """The keys under a prefix, relative to the prefix (sorted); lists only, reads no object."""
    bucket, prefix = _bucket_and_key(prefix_uri)
    keys: list[str] = []
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = s3_client.list_objects_v2(**request)
        keys.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
        if not page.get("IsTruncated"):
            return sorted(keys)
        request["ContinuationToken"] = page["NextContinuationToken"]


def list_objects(s3_client: Any, prefix_uri: str) -> dict[str, bytes]:
    """Every object under a prefix, keyed by its path relative to the prefix (sorted)."""
    bucket, prefix = _bucket_and_key(prefix_uri)
    return {
        name: bytes(s3_client.get_object(Bucket=bucket, Key=f"{prefix}{name}")["Body"].read())
        for name in list_keys(s3_client, prefix_uri)
    }
