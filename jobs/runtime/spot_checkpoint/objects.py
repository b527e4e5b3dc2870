"""Small S3 object helpers the example jobs and the drill share (inputs and outputs, not checkpoints)."""

from __future__ import annotations

from typing import Any

from .store import parse_s3_uri


def join_uri(prefix_uri: str, name: str) -> str:
    """``s3://b/p`` + ``x/y`` -> ``s3://b/p/x/y``."""
    return f"{prefix_uri.rstrip('/')}/{name.lstrip('/')}"


def read_object(s3_client: Any, uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    return bytes(s3_client.get_object(Bucket=bucket, Key=key.rstrip("/"))["Body"].read())


def write_object(s3_client: Any, uri: str, body: bytes, content_type: str = "application/octet-stream") -> None:
    bucket, key = parse_s3_uri(uri)
    s3_client.put_object(Bucket=bucket, Key=key.rstrip("/"), Body=body, ContentType=content_type)


def list_objects(s3_client: Any, prefix_uri: str) -> dict[str, bytes]:
    """Every object under a prefix, keyed by its path relative to the prefix (sorted)."""
    bucket, prefix = parse_s3_uri(prefix_uri)
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return {
        key[len(prefix) :]: bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in sorted(keys)
    }
