"""An S3 endpoint on 127.0.0.1 served by moto's in-process S3, for job processes that speak real HTTP.

moto's own ``ThreadedMotoServer`` needs Flask (the ``moto[server]`` extra), which the pinned ``moto[all]`` does not
bring. This adapter needs only the standard library: it hands each HTTP request to moto's request dispatcher as a
path-style request to ``s3.amazonaws.com`` - what boto3 sends to AWS for the same call - and writes back moto's
answer. Jobs find it with ``AWS_ENDPOINT_URL_S3``.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from spotctl.loopback import LoopbackHttpServer

AWS_S3_HOST = "s3.amazonaws.com"


class EmbeddedS3:
    """moto S3 behind a loopback HTTP server (random free port); use as a context manager."""

    def __init__(self) -> None:
        from moto import mock_aws
        from moto.core.botocore_stubber import BotocoreStubber

        self._mock = mock_aws()  # fresh, isolated moto state for the lifetime of the server
        self._dispatcher = BotocoreStubber()
        self._server = LoopbackHttpServer(self._handler_class(), "embedded-s3")

    @property
    def endpoint(self) -> str:
        return self._server.base_url

    def __enter__(self) -> EmbeddedS3:
        self._mock.start()
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._mock.stop()

    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        from botocore.awsrequest import AWSPreparedRequest
        from botocore.compat import HTTPHeaders

        aws_headers = HTTPHeaders()
        for name, value in headers.items():
            aws_headers[name] = value
        if "Host" in aws_headers:
            aws_headers.replace_header("Host", AWS_S3_HOST)
        request = AWSPreparedRequest(
            method=method,
            url=f"https://{AWS_S3_HOST}{path}",
            headers=aws_headers,
            body=body,
            stream_output=False,
        )
        response = self._dispatcher.process_request(request)
        if response is None:
            return 404, {}, b""
        return response

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        embedded = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._read_body()
                headers = {name: value for name, value in self.headers.items() if name.lower() != "transfer-encoding"}
                try:
                    status, response_headers, response_body = embedded._dispatch(self.command, self.path, headers, body)
                except Exception as exc:  # report as S3 would, never kill the server thread
                    status, response_headers, response_body = 500, {}, f"<Error><Message>{exc}</Message></Error>"
                payload = response_body.encode() if isinstance(response_body, str) else bytes(response_body or b"")
                response_headers = dict(response_headers or {})
                length = len(payload)
                if self.command == "HEAD":  # HEAD reports the object's length without sending it
                    length = int(next((v for k, v in response_headers.items() if k.lower() == "content-length"), 0))
                self.send_response(int(status))
                for name, value in response_headers.items():
                    if name.lower() not in {"content-length", "transfer-encoding", "connection", "server", "date"}:
                        self.send_header(name, str(value))
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
