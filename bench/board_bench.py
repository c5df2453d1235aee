"""How fast the board answers over 5,000 synced resources, next to paging them from Prefect.

Run by hand (not a test):

    .venv/bin/python bench/board_bench.py [--requests 200]
    .venv/bin/python bench/board_bench.py --postgres postgresql://postgres@127.0.0.1:5432

It reuses the kept Prefect workspace of bench/sync_bench.py (var/bench/prefect: 5,000 limits,
~500 holders, ~60 waiters), syncs it into a fresh reslock database (SQLite under var/bench, or
a temporary PostgreSQL database), then times full requests through Django (middleware, view,
templates, database) as a logged-in viewer:

  board     GET /                      the first page, default sort
  search    GET /?q=<text>             a substring that matches ~1 in 10 resources
  facet     GET /?status=held          a status facet
            each three ways: "cold", the board cache emptied first (the first viewer after the
            web process started); "after a sync", the board version raised and 50 rows (1 %)
            stamped anew first, as a sync that changed 50 limits leaves them (the first viewer
            after a sync: counts and page drawn anew, rows drawn before reused); and as served
            again to the next viewer of the same board version
  poll      GET /board/changes?status=held&seen=...  the page's one-second refresh, when
            nothing changed (204) and when one row changed (that row only)
  resource  GET /resources/<name>      a held resource's page

and, interleaved in the same run, paging the same limits straight from Prefect's API. Prints
p50/p95/max per request and the ratio of each p95 to one Prefect listing; target p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._prefect_fixture import BenchPrefect  # noqa: E402
from bench.sync_bench import database, setup_django  # noqa: E402

TARGET_P95_MS = 50.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per kind")
    parser.add_argument("--postgres", default="", help="a PostgreSQL server URL instead of SQLite")
    args = parser.parse_args()
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1")  # Django's test client
    # No periodic sync runs here: keep the one sync "fresh" for the whole run, so that the
    # banner (and so the poll's answer) does not turn to "behind Prefect" half-way.
    os.environ["RESLOCK_SYNC_SECONDS"] = "3600"
    url, drop = database(args)
    try:
        with BenchPrefect() as prefect:
            prefect.prepare()
            setup_django(url, migrate=True)
            from django.core.management import call_command

            call_command("collectstatic", interactive=False, verbosity=0)
            measure(prefect.api_url, args.requests, "postgresql" if args.postgres else "sqlite")
    finally:
        drop()


def fresh_statistics() -> None:
    """Planner statistics for the tables the first sync just filled.

    A database in use has them: PostgreSQL's autovacuum analyzes a table within a minute of a
    bulk load. Measured right after the load, without them, the planner takes 5,000 rows for
    3 and sorts them all for each page of 50 instead of reading the (gone_at, resource) index.
    SQLite plans without statistics either way.
    """
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def as_after_a_sync(pks: list[int], changed: int = 50) -> None:
    """What a sync that changed `changed` limits leaves: their rows stamped anew and the board
    version raised, in one transaction, as the store writes them."""
    import random

    from django.db import transaction
    from django.utils import timezone

    from reslock_web.models import Limit
    from reslock_web.sync.store import raise_board_version

    with transaction.atomic():
        Limit.objects.filter(pk__in=random.sample(pks, changed)).update(changed_at=timezone.now())
        raise_board_version()


def measure(api_url: str, count: int, engine: str) -> None:
    from django.contrib.auth.models import User
    from django.core.cache import caches
    from django.test import Client

    from reslock_web.models import Limit
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    with PrefectAPI(api_url) as api:
        run = sync_all(api)
    assert run is not None and run.ok, run and run.error
    fresh_statistics()
    held = Limit.objects.filter(is_held=True, kind="tag").order_by("name").first()
    viewer = User.objects.create_user("bench-viewer", password="x")
    client = Client()
    client.force_login(viewer)
    htmx = {"HTTP_HX_REQUEST": "true"}

    def polls() -> dict[str, tuple[str, dict, int]]:
        """What the held facet's page, drawn now, sends back each second; and the same with
        one row's version off, so the server answers with that row (one change in Prefect)."""
        html = client.get("/?status=held").content.decode()
        seen = re.search(r'id="live-state" name="seen" value="([^"]*)"', html).group(1)
        # (An older board version too: a page whose version is current is answered 204 at once.)
        one_off = "0" + seen[seen.index(".") :]
        one_off = re.sub(r"(\d+):\w+", r"\1:0", one_off, count=1)
        return {
            "poll, no change": (f"/board/changes?status=held&seen={quote(seen)}", htmx, 204),
            "poll, one row": (f"/board/changes?status=held&seen={quote(one_off)}", htmx, 200),
        }

    requests = {
        "board, cold": ("/", {}, 200),
        "board, after sync": ("/", {}, 200),
        "board": ("/", {}, 200),
        "search, cold": ("/?q=gcl-01", {}, 200),
        "search, after sync": ("/?q=gcl-01", {}, 200),
        "search": ("/?q=gcl-01", {}, 200),
        "facet, cold": ("/?status=held", {}, 200),
        "facet, after sync": ("/?status=held", {}, 200),
        "facet": ("/?status=held", {}, 200),
        **polls(),
        "resource": (f"/resources/{held.name}", {}, 200),
    }
    pks = list(Limit.objects.present().values_list("pk", flat=True))
    timings: dict[str, list[float]] = {kind: [] for kind in [*requests, "prefect paging"]}
    for path, headers, status in requests.values():  # warm caches and templates
        assert client.get(path, **headers).status_code == status, path
    with PrefectAPI(api_url) as api:
        for index in range(count):
            for kind in requests:
                if kind == "poll, no change":  # the page as it stands after this round's syncs
                    requests.update(polls())
                path, headers, status = requests[kind]
                if kind.endswith(", cold"):
                    caches["board"].clear()
                elif kind.endswith(", after sync"):
                    as_after_a_sync(pks)
                started = time.perf_counter()
                response = client.get(path, **headers)
                timings[kind].append((time.perf_counter() - started) * 1000)
                assert response.status_code == status
            if index % 10 == 0:  # a listing is slow: sample it every tenth round
                started = time.perf_counter()
                api.list_limits()
                timings["prefect paging"].append((time.perf_counter() - started) * 1000)
    rows = len(Limit.objects.present())
    print(f"\n{engine}: {rows} resources synced, {count} requests of each kind")
    print(
        f"{'':18} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p95 / paging':>13}  target p95 <= {TARGET_P95_MS:.0f} ms"
    )
    paging = statistics.median(timings["prefect paging"])
    for kind, values in timings.items():
        p95 = percentile(values, 0.95)
        verdict = "" if kind == "prefect paging" else ("PASS" if p95 <= TARGET_P95_MS else "MISS")
        print(
            f"{kind:18} {statistics.median(values):8.1f} {p95:8.1f} {max(values):8.1f} {p95 / paging:12.3f}x  {verdict}"
        )
    print(
        f"\nprefect paging = PrefectAPI.list_limits(): all {rows:,} limits from Prefect's API "
        f"({rows // 200 + 1} pages)"
    )


if __name__ == "__main__":
    main()
