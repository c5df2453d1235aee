"""A real HTTP hop in front of the test's Prefect server that can be switched to misbehave.

`FaultProxy(target)` forwards every request to `target` (the origin of Prefect's API) and
answers with Prefect's answer. Switch it at any time:

- `ok()`: forward faithfully;
- `fail(500)`: answer that status without asking Prefect;
- `slow(seconds, methods=...)`: forward, then hold the answer (Prefect did the work but answers
  late; a client that gives up earlier never sees it);
- `down()`: close the port (connections are refused); `up()` opens the same port again;
- `route(path_part, action, ...)`: a fault for the requests whose path contains `path_part`
  only, the rest forwarded faithfully: "fail" (answer `status` without asking Prefect, after
  `seconds`), "drop" (Prefect does it, the caller never hears back) or "hold" (Prefect does it,
  the answer comes `seconds` later); `times=N` for the next N such requests only. A "drop"
  or "hold" waits for a request Prefect carried out: one it refused (a busy database's 503)
  is answered as Prefect answered it, and does not count. `retry_after=S` sends that `Retry-After` with a "fail" (a 429 as Prefect Cloud's). A
  `path_part` ending in "$" matches the paths that end with the rest only. `clear()` and
  `ok()` end routes.

    proxy.route("/increment-with-lease", "drop", times=1)
    proxy.route("/events/filter", "fail", status=500)
    proxy.route("/decrement-with-lease", "hold", seconds=20)
    proxy.route("/concurrency_limits/decrement$", "fail", status=429, retry_after=600)

It counts the requests Prefect actually received, by method, so a test can tell how many
times a change reached Prefect, and `received` lists (time.time(), method, path) of every
request that reached the proxy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Route:
    action: str  # "drop" | "fail" | "hold"
    status: int = 500
    seconds: float = 0.0
    times: int | None = None  # how many requests it applies to (None: all)
    retry_after: float | None = None  # the Retry-After header of a "fail"


class FaultProxy:
    def __init__(self, target_api_url: str) -> None:
        parts = urlsplit(target_api_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.api_path = parts.path.rstrip("/")
        self.mode = "ok"
        self.status = 500
        self.delay = 0.0
        self.slow_methods: set[str] | None = None
        self.forwarded: Counter[str] = Counter()
        self.routes: dict[str, Route] = {}
        self.received: list[tuple[float, str, str]] = []
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
        self.mode = "ok"
        self.clear()

    def route(self, path_part: str, action: str, **options: object) -> None:
        if action not in ("drop", "fail", "hold"):
            raise ValueError(action)
        with self._lock:
            self.routes[path_part] = Route(action, **options)  # type: ignore[arg-type]

    def clear(self, path_part: str | None = None) -> None:
        with self._lock:
            if path_part is None:
                self.routes.clear()
            else:
                self.routes.pop(path_part, None)

    def received_at(self, path_part: str) -> list[float]:
        return [when for when, _, path in list(self.received) if path_part in path]

    def _take(self, path: str) -> tuple[str, Route] | None:
        with self._lock:
            for part, route in self.routes.items():
                if path.endswith(part[:-1]) if part.endswith("$") else part in path:
                    if route.times is not None:
                        route.times -= 1
                        if route.times <= 0:
                            del self.routes[part]
                    return part, route
        return None

    def _give_back(self, part: str, route: Route) -> None:
        """Prefect refused the request (busy, locked): it did not do it, so a "drop" or "hold"
        that says "Prefect does it" has not happened yet and waits for the next request."""
        with self._lock:
            if route.times is not None:
                route.times += 1
            self.routes.setdefault(part, route)

    def fail(self, status: int = 500) -> None:
        self.mode, self.status = "fail", status

    def slow(self, seconds: float, methods: set[str] | None = None) -> None:
        self.mode, self.delay, self.slow_methods = "slow", seconds, methods

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
        self.received.append((time.time(), handler.command, handler.path))
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        method = handler.command
        taken = self._take(handler.path)
        route = taken[1] if taken is not None else None
        if route is not None and route.action == "fail":
            time.sleep(route.seconds)
            extra = {} if route.retry_after is None else {"Retry-After": str(route.retry_after)}
            self._answer(handler, route.status, b'{"detail": "proxy says: failed"}', extra)
            return
        if route is None and self.mode == "fail":
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
        if taken is not None and route.action != "fail" and not response.is_success:
            self._give_back(*taken)
            route = None
        if route is not None and route.action == "drop":  # Prefect did it; no answer comes
            handler.close_connection = True
            return
        if route is not None:  # "hold"
            self._release.wait(route.seconds)
        elif self.mode == "slow" and (self.slow_methods is None or method in self.slow_methods):
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
