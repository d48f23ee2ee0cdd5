"""A loopback HTTP server for checkpoint download tests: Range support, misbehaviour on demand.

Used only by ``tests/test_checkpoints*.py``; it never talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    status: int


@dataclass
class Behaviour:
    """How the server misbehaves. Counters are one-shot and count down per request."""

    drop_after: dict[str, int] = field(default_factory=dict)  # path -> body bytes, then cut
    ignore_range: bool = False  # answer 200 with the whole file to Range requests
    fail_next: int = 0  # answer this many GETs with 503
    chunk: int = 64 * 1024
    chunk_delay: float = 0.0  # seconds to sleep after each chunk (throttle)
    # Checksum headers, as storage services send them: "content-md5" (RFC 1864: of the body
    # sent, so of the range in a 206), "x-goog-hash" (md5 of the whole object, always) or
    # "azure" (Content-MD5 of the whole blob in a 200, x-ms-blob-content-md5 in a 206).
    md5_header: str | None = None
    # path -> the bytes whose MD5 the server announces (default: the bytes it serves); a
    # server that sends wrong bytes of the right size announces the right file's MD5.
    announced: dict[str, bytes] = field(default_factory=dict)


class CheckpointServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread, serving in-memory files."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.behaviour = Behaviour()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> CheckpointServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def gets(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "GET" and s.path == path]

    def full_downloads(self, path: str) -> int:
        """GETs of ``path`` answered with the whole file (status 200)."""
        return sum(1 for s in self.gets(path) if s.status == 200)


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(server: CheckpointServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # silence
            pass

        def do_HEAD(self) -> None:
            data = server.files.get(self.path)
            if data is None:
                self._status(404, "HEAD")
                return
            server.record(Seen("HEAD", self.path, None, 200))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            data = server.files.get(self.path)
            b = server.behaviour
            if data is None:
                self._status(404, "GET", rng)
                return
            if b.fail_next > 0:
                b.fail_next -= 1
                self._status(503, "GET", rng)
                return
            start = 0
            match = _RANGE.match(rng or "")
            if match and not b.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    server.record(Seen("GET", self.path, rng, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                status = 206
            else:
                self.send_response(200)
                status = 200
            server.record(Seen("GET", self.path, rng, status))
            body = data[start:]
            self._md5_headers(b.announced.get(self.path, data), start, status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = b.drop_after.pop(self.path, None)
            limit = len(body) if cut is None else min(cut, len(body))
            sent = 0
            try:
                while sent < limit:
                    piece = body[sent : min(limit, sent + b.chunk)]
                    self.wfile.write(piece)
                    sent += len(piece)
                    if b.chunk_delay:
                        time.sleep(b.chunk_delay)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if cut is not None:  # drop the connection mid-file
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def _md5_headers(self, announced: bytes, start: int, status: int) -> None:
            def b64md5(data: bytes) -> str:
                return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")

            kind = server.behaviour.md5_header
            if kind == "content-md5":
                self.send_header("Content-MD5", b64md5(announced[start:]))
            elif kind == "x-goog-hash":
                self.send_header("x-goog-hash", "crc32c=AAAAAA==")
                self.send_header("x-goog-hash", f"md5={b64md5(announced)}")
            elif kind == "azure":
                name = "Content-MD5" if status == 200 else "x-ms-blob-content-md5"
                self.send_header(name, b64md5(announced))

        def _status(self, code: int, method: str, rng: str | None = None) -> None:
            server.record(Seen(method, self.path, rng, code))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
