"""The Spot interruption notice from EC2 instance metadata (IMDSv2), with the standard library only."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ENDPOINT = "http://169.254.169.254/"
TOKEN_PATH = "latest/api/token"
INSTANCE_ACTION_PATH = "latest/meta-data/spot/instance-action"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class MetadataUnavailable(Exception):
    """The instance metadata service did not answer (not on EC2, hop limit, network)."""


class InstanceMetadata:
    """Reads ``spot/instance-action``: IMDSv2 session token first, then the notice with that token."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, timeout: float = 1.0, token_ttl_seconds: int = 21600):
        self.endpoint = endpoint if endpoint.endswith("/") else f"{endpoint}/"
        self.timeout = timeout
        self.token_ttl_seconds = token_ttl_seconds
        self._token: str | None = None
        self._token_expires = 0.0
        # IMDS is link-local: never send it through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.endpoint}{path}", method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), b""
        # A truncated or garbled answer (IncompleteRead, BadStatusLine, a bad header or URL) is as unavailable as
        # no answer: the caller polls again rather than dying. UnicodeError is a ValueError.
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError) as exc:
            raise MetadataUnavailable(f"instance metadata at {self.endpoint} unreachable: {exc}") from exc

    def _session_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            status, body = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self.token_ttl_seconds)})
            if status != 200 or not body:
                raise MetadataUnavailable(f"instance metadata token request answered {status}")
            try:
                self._token = body.decode("ascii")
            except UnicodeDecodeError as exc:
                raise MetadataUnavailable("instance metadata returned an unreadable token") from exc
            # Renew a minute early so a poll never carries an expired token.
            self._token_expires = time.monotonic() + max(self.token_ttl_seconds - 60, 1)
        return self._token

    def spot_instance_action(self) -> dict[str, Any] | None:
        """The pending Spot action (``{"action": "terminate", "time": "..."}``) or None (404: no notice)."""
        for _ in range(2):
            status, body = self._request("GET", INSTANCE_ACTION_PATH, {TOKEN_HEADER: self._session_token()})
            if status == 401:  # token expired or revoked: get a new one once
                self._token = None
                continue
            if status == 404:
                return None
            if status != 200:
                raise MetadataUnavailable(f"spot/instance-action answered {status}")
            try:
                notice = json.loads(body)
            except ValueError:
                notice = {"action": body.decode(errors="replace").strip()}
            return notice if isinstance(notice, dict) else {"action": str(notice)}
        raise MetadataUnavailable("instance metadata rejected a fresh token")
