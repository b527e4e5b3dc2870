"""A stand-in for the EC2 instance metadata service on loopback: IMDSv2 tokens and ``spot/instance-action``.

What EC2 does: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` returns a session token,
valid for that many seconds; ``GET /latest/meta-data/spot/instance-action`` with ``X-aws-ec2-metadata-token`` returns
404 until the instance is marked for interruption, then ``{"action": "terminate", "time": "<UTC, two minutes
later>"}``; a request without a valid token (none, an unknown one, one past its TTL) gets 401. The drill (or anyone,
with ``POST /drill/spot-notice``) posts the notice.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler

from spot_checkpoint.csvfields import ascii_digits

from spotctl.loopback import LoopbackHttpServer

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
NOTICE_PATH = "/drill/spot-notice"
WARNING_SECONDS = 120


class MetadataStandIn:
    """One instance's metadata service on 127.0.0.1 (random free port); use as a context manager. Tokens expire by
    ``clock`` (seconds, monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, float] = {}  # token -> when it expires, by the clock
        self._notice: dict[str, str] | None = None
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for tests and diagnostics
        self._server = LoopbackHttpServer(self._handler_class(), "metadata-stand-in")

    @property
    def endpoint(self) -> str:
        return f"{self._server.base_url}/"

    def post_notice(self, action: str = "terminate") -> None:
        """Mark the instance for interruption, as EC2 does two minutes before reclaiming it."""
        when = datetime.now(UTC) + timedelta(seconds=WARNING_SECONDS)
        with self._lock:
            self._notice = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def clear_notice(self) -> None:
        """A fresh instance: no notice pending."""
        with self._lock:
            self._notice = None

    def __enter__(self) -> MetadataStandIn:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
                stand_in.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if self.path != TOKEN_PATH:
                    return self._reply(404)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not (ascii_digits(ttl) and 1 <= int(ttl) <= 21600):
                    return self._reply(400)
                token = secrets.token_urlsafe(24)
                with stand_in._lock:
                    stand_in._tokens[token] = stand_in._clock() + int(ttl)
                return self._reply(200, token.encode())

            def do_GET(self) -> None:
                with stand_in._lock:
                    expires = stand_in._tokens.get(self.headers.get("X-aws-ec2-metadata-token", ""))
                    authorised = expires is not None and stand_in._clock() < expires
                    notice = stand_in._notice
                if not authorised:
                    return self._reply(401)
                if self.path != INSTANCE_ACTION_PATH or notice is None:
                    return self._reply(404)
                return self._reply(200, json.dumps(notice).encode(), "application/json")

            def do_POST(self) -> None:
                if self.path != NOTICE_PATH:
                    return self._reply(404)
                stand_in.post_notice()
                return self._reply(204)

            def log_message(self, format: str, *args: object) -> None:  # keep the drill's output clean
                pass

        return Handler
