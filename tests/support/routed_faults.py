"""A FaultProxy (tests/support/fault_proxy.py) whose faults hit chosen paths only.

    proxy = RoutedFaultProxy(prefect_server.api_url)
    proxy.route("/increment-with-lease", "drop", times=1)   # Prefect applies it, no answer
    proxy.route("/renew", "fail", status=500)                # answered at once, not forwarded
    proxy.route("/renew", "hold", seconds=9.5)               # forwarded, answered 9.5 s later
    proxy.clear("/renew")

A request whose path contains no routed part is forwarded faithfully. `received` lists
(time.time(), method, path) of every request that reached the proxy, in order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import httpx

from tests.support.fault_proxy import HOP_HEADERS, FaultProxy


@dataclass
class Route:
    action: str  # "drop" | "fail" | "hold"
    status: int = 500
    seconds: float = 0.0
    times: int | None = None  # how many requests it applies to (None: all)


class RoutedFaultProxy(FaultProxy):
    def __init__(self, target_api_url: str) -> None:
        self.routes: dict[str, Route] = {}
        self.received: list[tuple[float, str, str]] = []
        self._routes_lock = threading.Lock()
        super().__init__(target_api_url)

    def route(self, path_part: str, action: str, **options: object) -> None:
        if action not in ("drop", "fail", "hold"):
            raise ValueError(action)
        with self._routes_lock:
            self.routes[path_part] = Route(action, **options)  # type: ignore[arg-type]

    def clear(self, path_part: str) -> None:
        with self._routes_lock:
            self.routes.pop(path_part, None)

    def received_at(self, path_part: str) -> list[float]:
        return [when for when, _, path in list(self.received) if path_part in path]

    def _take(self, path: str) -> Route | None:
        with self._routes_lock:
            for part, route in self.routes.items():
                if part in path:
                    if route.times is not None:
                        route.times -= 1
                        if route.times <= 0:
                            del self.routes[part]
                    return route
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        self.received.append((time.time(), handler.command, handler.path))
        route = self._take(handler.path)
        if route is None:
            super()._handle(handler)
            return
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        if route.action == "fail":
            time.sleep(route.seconds)
            self._answer(handler, route.status, b'{"detail": "proxy says: failed"}', {})
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            response = self._upstream.request(
                handler.command, handler.path, content=body, headers=headers
            )
        except httpx.HTTPError:
            handler.close_connection = True
            return
        with self._lock:
            self.forwarded[handler.command] += 1
        if route.action == "drop":  # Prefect did it; the caller never hears back
            handler.close_connection = True
            return
        self._release.wait(route.seconds)
        kept = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        kept.pop("content-encoding", None)
        self._answer(handler, response.status_code, response.content, kept)
