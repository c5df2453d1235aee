"""A stand-in for Prefect Cloud in front of the test's Prefect server.

Prefect Cloud is out of reach from the tests, so this small ASGI app speaks what reslock meets
there and forwards the rest to the real server:

- the workspace URL shape: `/api/accounts/<account>/workspaces/<workspace>/<path>` is Prefect's
  `/api/<path>`;
- the API key: every request needs `Authorization: Bearer <key>` (401 otherwise), and the event
  stream's first message must carry it as its token (the socket is closed with 1008 otherwise,
  as Prefect closes it);
- a rate limit: at most `per_window` requests in any `window` seconds (Cloud: a minute), beyond
  which it answers 429 with a `Retry-After` saying when a request fits again, as Cloud does.

`requests` records (time, method, path, status) of every HTTP request it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections import deque

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.support.net import free_port, wait_for

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
WORKSPACE = "/api/accounts/{account}/workspaces/{workspace}"


class CloudStandIn:
    def __init__(
        self,
        target_api_url: str,
        api_key: str,
        per_window: int | None = None,
        window: float = 60.0,
    ) -> None:
        self.target = target_api_url.rstrip("/")  # http://127.0.0.1:<port>/api
        self.api_key = api_key
        self.per_window = per_window
        self.window = window
        self.requests: list[tuple[float, str, str, int]] = []
        self.stream_auth: list[bool] = []  # whether each stream's token was the key
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()
        self.port = free_port()
        self.account = "0b5e1a2c-acc0-4f00-9000-00000000000a"
        self.workspace = "0b5e1a2c-0000-4f00-9000-00000000000b"
        app = Starlette(
            routes=[
                WebSocketRoute(WORKSPACE + "/events/out", self._events_out),
                Route(
                    WORKSPACE + "/{path:path}",
                    self._http,
                    methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
                ),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, 30, what="the Cloud stand-in to start")

    @property
    def api_url(self) -> str:
        return (
            f"http://127.0.0.1:{self.port}/api/accounts/{self.account}/workspaces/{self.workspace}"
        )

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def throttled(self) -> int:
        return sum(1 for *_, status in self.requests if status == 429)

    def most_in_any(self, seconds: float, refused_too: bool = False) -> int:
        """The most requests passed on (not refused) in any window of that many seconds; with
        `refused_too`, every request that reached the stand-in, its 429s included."""
        refused = (401,) if refused_too else (401, 429)
        sent = sorted(t for t, _, _, status in self.requests if status not in refused)
        most, start = 0, 0
        for end, at in enumerate(sent):
            while at - sent[start] >= seconds:
                start += 1
            most = max(most, end - start + 1)
        return most

    # --- HTTP ---------------------------------------------------------------------------
    def _admit(self) -> float:
        """0 if the request fits the rate limit (and counts it), else seconds to wait."""
        if self.per_window is None:
            return 0.0
        with self._lock:
            now = time.time()
            while self._recent and now - self._recent[0] >= self.window:
                self._recent.popleft()
            if len(self._recent) >= self.per_window:
                return max(self.window - (now - self._recent[0]), 0.001)
            self._recent.append(now)
            return 0.0

    async def _http(self, request: Request) -> Response:
        path = request.path_params["path"]
        status = await self._answer_status(request)
        if status is not None:
            return status
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_HEADERS | {"authorization"}
        }
        async with httpx.AsyncClient(timeout=60) as upstream:
            answer = await upstream.request(
                request.method,
                f"{self.target}/{path}",
                params=request.query_params,
                content=await request.body(),
                headers=headers,
            )
        self._record(request, path, answer.status_code)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        kept.pop("content-encoding", None)
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def _answer_status(self, request: Request) -> Response | None:
        path = request.path_params["path"]
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            self._record(request, path, 401)
            return JSONResponse({"detail": "Unauthorized"}, status_code=401)
        wait = self._admit()
        if wait:
            self._record(request, path, 429)
            return JSONResponse(
                {"detail": "Rate limit exceeded"},
                status_code=429,
                headers={"Retry-After": str(math.ceil(wait))},
            )
        return None

    def _record(self, request: Request, path: str, status: int) -> None:
        self.requests.append((time.time(), request.method, path, status))

    # --- the event stream -----------------------------------------------------------------
    async def _events_out(self, client: WebSocket) -> None:
        await client.accept(subprotocol="prefect")
        try:
            auth = await client.receive_json()
        except WebSocketDisconnect:
            return
        good = auth.get("type") == "auth" and auth.get("token") == self.api_key
        self.stream_auth.append(good)
        if not good:
            await client.close(1008, reason="Invalid token")
            return
        url = self.target.replace("http://", "ws://", 1) + "/events/out"
        async with websockets.connect(url, subprotocols=["prefect"]) as server:
            await server.send(json.dumps({"type": "auth", "token": None}))
            await client.send_text(await server.recv())  # auth_success
            await _pipe(client, server)


async def _pipe(client: WebSocket, server) -> None:
    async def downstream() -> None:
        async for message in server:
            await client.send_text(message if isinstance(message, str) else message.decode())

    async def upstream() -> None:
        while True:
            message = await client.receive_text()
            await server.send(message)

    tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
    with contextlib.suppress(Exception):
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
