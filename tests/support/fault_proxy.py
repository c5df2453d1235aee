"""A real HTTP hop in front of the test's Prefect server that can be switched to misbehave.

`FaultProxy(target)` forwards every request to `target` (the origin of Prefect's API) and
answers with Prefect's answer. Switch it at any time:

- `ok()`: forward faithfully;
- `fail(500)`: answer that status without asking Prefect (`paths=` limits it to requests
  whose path ends with one of those, e.g. {"/events/filter"}; the rest go through);
- `slow(seconds, methods=..., paths=...)`: forward, then hold the answer (Prefect did the work
  but answers late; a client that gives up earlier never sees it);
- `down()`: close the port (connections are refused); `up()` opens the same port again.

It counts the requests Prefect actually received, by method, so a test can tell how many
times a change reached Prefect.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultProxy:
    def __init__(self, target_api_url: str) -> None:
        parts = urlsplit(target_api_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.api_path = parts.path.rstrip("/")
        self.mode = "ok"
        self.status = 500
        self.delay = 0.0
        self.slow_methods: set[str] | None = None
        self.affected_paths: set[str] | None = None
        self.forwarded: Counter[str] = Counter()
        self._release = threading.Event()  # set when closing: every held answer goes out now
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=self.origin, timeout=60)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.api_path}"

    # --- switches ---------------------------------------------------------------------
    def ok(self) -> None:
        self.mode, self.affected_paths = "ok", None

    def fail(self, status: int = 500, paths: set[str] | None = None) -> None:
        self.mode, self.status, self.affected_paths = "fail", status, paths

    def slow(
        self, seconds: float, methods: set[str] | None = None, paths: set[str] | None = None
    ) -> None:
        self.mode, self.delay, self.slow_methods = "slow", seconds, methods
        self.affected_paths = paths

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def up(self) -> None:
        if self._server is not None:
            return
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so `down()` leaves no open connection
            # that would keep answering.
            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def close(self) -> None:
        self._release.set()
        self.down()
        self._upstream.close()

    # --- the hop ----------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        method = handler.command
        path = handler.path.split("?", 1)[0].rstrip("/")
        affected = self.affected_paths is None or any(path.endswith(p) for p in self.affected_paths)
        if self.mode == "fail" and affected:
            self._answer(handler, self.status, b'{"detail": "proxy says: internal error"}', {})
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            response = self._upstream.request(method, handler.path, content=body, headers=headers)
        except httpx.HTTPError:
            handler.close_connection = True
            return  # dropped without an answer, as a dying server would
        with self._lock:
            self.forwarded[method] += 1
        if (
            self.mode == "slow"
            and affected
            and (self.slow_methods is None or method in self.slow_methods)
        ):
            self._release.wait(self.delay)
        kept = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        kept.pop("content-encoding", None)  # httpx already decoded the body
        self._answer(handler, response.status_code, response.content, kept)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            if "content-type" not in {k.lower() for k in headers}:
                handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (its timeout) or died: nobody to answer
