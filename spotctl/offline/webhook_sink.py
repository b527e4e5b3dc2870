"""A Slack incoming-webhook stand-in: a real HTTP server on 127.0.0.1 that records what is posted to it.

Offline, the control plane's Slack messages really go over HTTP to this sink. It answers like Slack does
(200 "ok"; 400 "invalid_payload" for a body that is not JSON) and can be scripted to answer a sequence of
statuses first, e.g. 429 with Retry-After, then 500, then 200, or to hang so that the sender times out.

    with WebhookSink(script=[SinkResponse.rate_limited(1), SinkResponse(500)]) as sink:
        post_to(sink.url)
        assert sink.delivered_messages == [...]
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from spotctl.loopback import LoopbackHttpServer

# Shaped like a Slack webhook path, so the sender's handling of the path is exercised too.
DEFAULT_PATH = "/services/T00000000/B00000000/offlinesinktoken000000"
# A hanging answer never outlives this, so a forgotten sink cannot block the interpreter's exit.
MAX_HANG_SECONDS = 30.0
MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class SinkResponse:
    """One scripted answer. `hang_seconds` > 0 holds the request open that long (or until the sink stops)."""

    status: int = 200
    body: str = "ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0

    @classmethod
    def rate_limited(cls, retry_after_seconds: int | float) -> SinkResponse:
        return cls(429, "rate_limited", {"Retry-After": f"{retry_after_seconds:g}"})

    @classmethod
    def server_error(cls, status: int = 500) -> SinkResponse:
        return cls(status, "internal_error")

    @classmethod
    def hang(cls, seconds: float = MAX_HANG_SECONDS) -> SinkResponse:
        return cls(200, "ok", hang_seconds=seconds)


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the sink answered (or would have, for a hung request)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class WebhookSink:
    """Start with `start()` or a `with` block; `url` is then the webhook URL to post to."""

    def __init__(self, script: Iterable[SinkResponse | int] = (), path: str = DEFAULT_PATH) -> None:
        self.path = path
        self._script: list[SinkResponse] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._requests: list[ReceivedRequest] = []
        self._server = LoopbackHttpServer(_make_handler(self), "webhook-sink")
        self.respond_with(*script)

    # --- lifecycle

    def start(self) -> WebhookSink:
        if not self._server.running:
            self._released.clear()
            self._server.start()
        return self

    def stop(self) -> None:
        self._released.set()  # let hung requests finish
        self._server.stop()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"{self._server.base_url}{self.path}"

    # --- scripting and inspection

    def respond_with(self, *responses: SinkResponse | int) -> None:
        """Queue answers for the next requests; once used up, the sink answers 200 "ok"."""
        with self._lock:
            self._script.extend(
                r if isinstance(r, SinkResponse) else SinkResponse(r, _default_body(r)) for r in responses
            )

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, in order, whatever was answered."""
        with self._lock:
            return list(self._requests)

    @property
    def delivered_messages(self) -> list[Any]:
        """The parsed JSON bodies of the requests answered with a 2xx: what a Slack channel would show."""
        return [r.json for r in self.requests if 200 <= r.status < 300]

    def _next_response(self, body: bytes) -> SinkResponse:
        with self._lock:
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            return scripted
        try:
            json.loads(body)
        except ValueError:
            return SinkResponse(400, "invalid_payload")
        return SinkResponse()

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _default_body(status: int) -> str:
    return {200: "ok", 400: "invalid_payload", 403: "invalid_token", 404: "no_service", 429: "rate_limited"}.get(
        status, "ok" if status < 300 else "internal_error"
    )


def _make_handler(sink: WebhookSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
            body = self.rfile.read(length)
            response = sink._next_response(body)
            sink._record(ReceivedRequest(self.path, dict(self.headers.items()), body, response.status))
            if response.hang_seconds > 0:
                sink._released.wait(min(response.hang_seconds, MAX_HANG_SECONDS))
            payload = response.body.encode("utf-8")
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender gave up (timed out) before the answer

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the sink's callers inspect `requests` instead of reading an access log."""

    return Handler
