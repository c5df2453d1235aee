"""Days of lock events written straight into a Prefect database on PostgreSQL, for benchmarks.

A million events do not go through Prefect's ingestion here: its events socket took 1,200 of
them in 2.5 s on these machines (sent and readable back), a million would take over half an
hour, and what a benchmark of the sync measures is Prefect's read API and reslock. The rows
are written into Prefect's own tables, `events` and `event_resources`, in the form Prefect's
writer gives them (`ReceivedEvent.as_database_row` and `as_database_resource_rows`).

The events are generated once into two staging tables of the same database, with times kept
relative to the moment they are loaded, and tiered: tier 0 is a tenth of them (the baseline),
tier 1 the rest. `load(tier)` copies a tier into Prefect's tables, shifted to end a minute ago:
the kept staging stays usable however old it is, where kept events would leave Prefect's 7-day
window. A load drops the tables' secondary indexes and builds them again after the copy, which
is how a bulk load is done; Prefect's tables end as its writer would have left them.

What is generated, on the limits given (global and tag limits; deployment limits get none):
 - Prefect's `concurrency()` holds: `prefect.concurrency-limit.acquired` then `released`, with
   the flow run, task run and flow as related resources. The release `follows` the acquire
   when it came within 5 minutes, as Prefect sets it; a few holds last longer and their
   release does not (the sync pairs those by run).
 - the helper's holds on global limits: `reslock.lock.acquired` (lease id, wait id, holder,
   process identity) and `reslock.lock.released`, one in five after a `reslock.lock.waiting`,
   and a few waits that end in `reslock.lock.timed_out`.
Every hold and wait is over before the load: the backfill closes all of them. Busy limits get
more than quiet ones (a limit's share falls with its rank).
"""

from __future__ import annotations

import bisect
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import psycopg

STAGE_EVENTS = "reslock_bench_events"
STAGE_RESOURCES = "reslock_bench_event_resources"
META = "reslock_bench_meta"
FOLLOWS_WITHIN = 300.0  # seconds: Prefect sets `follows` only this close to the event it follows
PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"
HELPER = "reslock.lock."


@dataclass(frozen=True)
class SeedLimit:
    id: str
    name: str
    limit: int
    helper: bool  # the helper takes it (global limits); else only Prefect's own holds


@dataclass
class Seeded:
    """What the staging holds: events per tier, and what they were generated for."""

    events: dict[int, int]
    resources: dict[int, int]
    asked: int  # events asked for (whole holds are made: a few more)
    limits: int
    window: float
    seed: int

    @property
    def total(self) -> int:
        return sum(self.events.values())


def _copy_text(value: Any) -> str:
    """A value in COPY's text format."""
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class _Story:
    """The events of one hold or wait, in order: (seconds from its start, event, resource,
    related, payload, follows index or None)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict, list, dict, int | None]] = []

    def add(
        self,
        at: float,
        name: str,
        resource: dict,
        related: list,
        payload: dict,
        follows: int | None = None,
    ) -> int:
        if follows is not None and at - self.events[follows][0] > FOLLOWS_WITHIN:
            follows = None
        self.events.append((at, name, resource, related, payload, follows))
        return len(self.events) - 1


class EventSeed:
    """The staging tables and loads of one Prefect database (a psycopg URL)."""

    def __init__(self, dsn: str, log: Callable[[str], None] = print) -> None:
        self.dsn = dsn
        self.log = log

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    # --- what is there --------------------------------------------------------------------
    def stored(self) -> Seeded | None:
        with self.connect() as db:
            if not db.execute("SELECT to_regclass(%s)", (META,)).fetchone()[0]:
                return None
            row = db.execute(f"SELECT value FROM {META} WHERE key = 'seeded'").fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Seeded(
            events={int(k): v for k, v in data["events"].items()},
            resources={int(k): v for k, v in data["resources"].items()},
            asked=data["asked"],
            limits=data["limits"],
            window=data["window"],
            seed=data["seed"],
        )

    def loaded(self, prefixes: tuple[str, ...] = ("prefect.concurrency-limit.", HELPER)) -> int:
        """Lock events now in Prefect's `events` table."""
        where = " OR ".join("event LIKE %s" for _ in prefixes)
        with self.connect() as db:
            return db.execute(
                f"SELECT count(*) FROM events WHERE {where}", [p + "%" for p in prefixes]
            ).fetchone()[0]

    # --- generating -----------------------------------------------------------------------
    def generate(
        self,
        limits: list[SeedLimit],
        count: int,
        window: float,
        seed: int = 1,
        baseline_share: float = 0.1,
    ) -> Seeded:
        """About `count` events (whole holds) over `window` seconds, into the staging tables;
        a share `baseline_share` of the holds in tier 0."""
        started = time.monotonic()
        self.log(f"  generating {count:,} lock events on {len(limits):,} limits...")
        with self.connect() as db:
            db.execute(f"DROP TABLE IF EXISTS {STAGE_EVENTS}, {STAGE_RESOURCES}, {META}")
            db.execute(f"CREATE TABLE {META} (key text PRIMARY KEY, value text NOT NULL)")
            db.execute(
                f"CREATE TABLE {STAGE_EVENTS} (tier smallint NOT NULL, id uuid NOT NULL,"
                " at double precision NOT NULL, delay double precision NOT NULL,"
                " event text NOT NULL, resource_id text NOT NULL, resource jsonb NOT NULL,"
                " related_resource_ids jsonb NOT NULL, related jsonb NOT NULL,"
                " payload jsonb NOT NULL, follows uuid)"
            )
            db.execute(
                f"CREATE TABLE {STAGE_RESOURCES} (tier smallint NOT NULL, event_id uuid NOT NULL,"
                " at double precision NOT NULL, resource_id text NOT NULL,"
                " resource_role text NOT NULL, resource jsonb NOT NULL)"
            )
            events = {0: 0, 1: 0}
            resources = {0: 0, 1: 0}
            # Two connections, so that both tables are copied as the events are made.
            with (
                self.connect() as other,
                db.cursor().copy(
                    f"COPY {STAGE_EVENTS} (tier, id, at, delay, event, resource_id, resource,"
                    " related_resource_ids, related, payload, follows) FROM STDIN"
                ) as copy_events,
                other.cursor().copy(
                    f"COPY {STAGE_RESOURCES} (tier, event_id, at, resource_id, resource_role,"
                    " resource) FROM STDIN"
                ) as copy_resources,
            ):
                event_lines: list[str] = []
                resource_lines: list[str] = []
                rows = self._rows(limits, count, window, seed, baseline_share)
                for tier, row, resource_rows in rows:
                    events[tier] += 1
                    resources[tier] += len(resource_rows)
                    event_lines.append("\t".join(map(_copy_text, (tier, *row))) + "\n")
                    resource_lines.extend(
                        "\t".join(map(_copy_text, (tier, *r))) + "\n" for r in resource_rows
                    )
                    if len(event_lines) >= 5000:
                        copy_events.write("".join(event_lines))
                        copy_resources.write("".join(resource_lines))
                        event_lines.clear()
                        resource_lines.clear()
                    done = events[0] + events[1]
                    if done % 200_000 == 0:
                        self.log(f"    {done:,} in {time.monotonic() - started:.0f} s")
                copy_events.write("".join(event_lines))
                copy_resources.write("".join(resource_lines))
            seeded = Seeded(events, resources, count, len(limits), window, seed)
            db.execute(
                f"INSERT INTO {META} VALUES ('seeded', %s)",
                (
                    json.dumps(
                        {
                            "events": events,
                            "resources": resources,
                            "asked": count,
                            "limits": len(limits),
                            "window": window,
                            "seed": seed,
                        }
                    ),
                ),
            )
            db.execute(f"ANALYZE {STAGE_EVENTS}, {STAGE_RESOURCES}")
        self.log(
            f"  generated {seeded.total:,} events ({events[0]:,} in the baseline tier) and "
            f"{sum(resources.values()):,} event resources in {time.monotonic() - started:.0f} s"
        )
        return seeded

    def _rows(
        self, limits: list[SeedLimit], count: int, window: float, seed: int, share: float
    ) -> Iterator[tuple[int, tuple, list[tuple]]]:
        """(tier, staging row, its event_resources rows) for about `count` events."""
        rng = random.Random(seed)
        order = limits[:]
        rng.shuffle(order)  # which limits are the busy ones
        cumulative = list(accumulate(1.0 / (rank + 10) ** 0.8 for rank in range(len(order))))
        flows = [(str(uuid.UUID(int=rng.getrandbits(128))), f"bench-flow-{i}") for i in range(40)]
        made = 0
        while made < count:
            pick = rng.random() * cumulative[-1]
            limit = order[min(bisect.bisect(cumulative, pick), len(order) - 1)]
            story = self._story(rng, limit, flows)
            span = story.events[-1][0]
            # Every hold has ended by a minute before the load.
            start = -60.0 - span - rng.random() * max(0.0, window - 120.0 - span)
            tier = 0 if rng.random() < share else 1
            ids = [str(uuid.uuid4()) for _ in story.events]
            for index, (at, name, resource, related, payload, follows) in enumerate(story.events):
                when = start + at
                row = (
                    ids[index],
                    round(when, 6),
                    round(rng.uniform(0.05, 1.5), 3),  # received after it occurred
                    name,
                    resource["prefect.resource.id"],
                    resource,
                    [r["prefect.resource.id"] for r in related],
                    related,
                    payload,
                    ids[follows] if follows is not None else None,
                )
                resource_rows = [
                    (
                        ids[index],
                        round(when, 6),
                        labels["prefect.resource.id"],
                        labels.get("prefect.resource.role", ""),
                        {
                            k: v
                            for k, v in labels.items()
                            if k not in ("prefect.resource.id", "prefect.resource.role")
                        },
                    )
                    for labels in (resource, *related)
                ]
                yield tier, row, resource_rows
            made += len(story.events)

    @staticmethod
    def _story(rng: random.Random, limit: SeedLimit, flows: list[tuple[str, str]]) -> _Story:
        story = _Story()
        flow_id, flow_name = rng.choice(flows)
        flow_run, task_run = uuid.uuid4(), uuid.uuid4()
        run_name = f"{flow_name}-{str(flow_run)[:8]}"
        related = [
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": run_name,
            },
            {
                "prefect.resource.id": f"prefect.task-run.{task_run}",
                "prefect.resource.role": "task-run",
                "prefect.resource.name": f"task-{str(task_run)[:8]}",
            },
            {
                "prefect.resource.id": f"prefect.flow.{flow_id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow_name,
            },
        ]
        resource = {
            "prefect.resource.id": f"prefect.concurrency-limit.{limit.id}",
            "prefect.resource.name": limit.name,
        }
        # Most holds are short; one in fifteen lasts 5 to 90 minutes.
        held = rng.uniform(300, 5400) if rng.random() < 1 / 15 else rng.expovariate(1 / 60)
        kind = rng.random() if limit.helper else 0.0
        if kind < 0.65:  # Prefect's concurrency()
            prefect_resource = {**resource, "slots-acquired": "1", "limit": str(limit.limit)}
            first = story.add(0.0, PREFECT_ACQUIRED, prefect_resource, related, {})
            story.add(held, PREFECT_RELEASED, prefect_resource, related, {}, follows=first)
            return story
        wait_id, lease_id = str(uuid.uuid4()), str(uuid.uuid4())
        names = [limit.name]
        holder = {"type": "task_run", "id": str(task_run)}
        start, waited, previous = 0.0, 0.0, None
        if kind > 0.9 or rng.random() < 0.2:  # the first try found it taken
            waited = rng.expovariate(1 / 30)
            previous = story.add(
                0.0,
                HELPER + "waiting",
                resource,
                related,
                {
                    "lease_duration": 300,
                    "wait_id": wait_id,
                    "holder": holder,
                    "names": names,
                    "timeout": 600 if kind > 0.9 else None,
                    "host": "bench-worker",
                    "pid": rng.randint(100, 60000),
                },
            )
            start = waited
        if kind > 0.95:  # gave up
            story.add(
                start,
                HELPER + "timed_out",
                resource,
                related,
                {"wait_id": wait_id, "timeout": 600, "names": names, "waited_seconds": waited},
                follows=previous,
            )
            return story
        acquired = story.add(
            start,
            HELPER + "acquired",
            resource,
            related,
            {
                "lease_id": lease_id,
                "lease_duration": 300,
                "wait_id": wait_id,
                "holder": holder,
                "names": names,
                "waited_seconds": round(waited, 3),
                "protocol": 2,
                "process": {
                    "boot_id": "7f0c1a52-bench-boot",
                    "pid_ns": "pid:[4026531836]",
                    "time_ns": "time:[4026531834]",
                    "pid": rng.randint(100, 60000),
                    "start_ticks": rng.randint(1, 10**9),
                },
            },
            follows=previous,
        )
        story.add(
            start + held,
            HELPER + "released",
            resource,
            related,
            {
                "lease_id": lease_id,
                "wait_id": wait_id,
                "names": names,
                "reason": "error" if rng.random() < 0.03 else "exit",
                "held_seconds": round(held, 3),
            },
            follows=acquired,
        )
        return story

    # --- loading --------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty Prefect's event tables (every event, not only the staged ones)."""
        with self.connect() as db:
            db.execute("TRUNCATE events, event_resources")

    def load(self, tier: int) -> tuple[int, float]:
        """Copy a tier into Prefect's tables, its last events a minute ago. Returns the events
        copied and the seconds it took (indexes built again included)."""
        started = time.monotonic()
        with self.connect() as db:
            self._restore_indexes(db)
            definitions = self._secondary_indexes(db)
            db.execute(
                f"INSERT INTO {META} VALUES ('indexes', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (json.dumps(definitions),),
            )
            for name in definitions:
                db.execute(f'DROP INDEX IF EXISTS "{name}"')
            with db.transaction():
                copied = db.execute(
                    "INSERT INTO events (id, created, updated, occurred, event, resource_id,"
                    " resource, related_resource_ids, related, payload, received, recorded,"
                    " follows)"
                    " SELECT id, now(), now(), now() + make_interval(secs => at), event,"
                    " resource_id, resource, related_resource_ids, related, payload,"
                    " now() + make_interval(secs => at + delay),"
                    " now() + make_interval(secs => at + delay + 0.01), follows"
                    f" FROM {STAGE_EVENTS} WHERE tier = %s",
                    (tier,),
                ).rowcount
                db.execute(
                    "INSERT INTO event_resources (id, created, updated, occurred, resource_id,"
                    " resource_role, resource, event_id)"
                    " SELECT gen_random_uuid(), now(), now(), now() + make_interval(secs => at),"
                    f" resource_id, resource_role, resource, event_id FROM {STAGE_RESOURCES}"
                    " WHERE tier = %s",
                    (tier,),
                )
            self._restore_indexes(db)
            db.execute("ANALYZE events, event_resources")
        return copied, time.monotonic() - started

    @staticmethod
    def _secondary_indexes(db: psycopg.Connection) -> dict[str, str]:
        """Name -> definition of the indexes of Prefect's event tables that back no constraint."""
        rows = db.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid IN ('events'::regclass, 'event_resources'::regclass)"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        ).fetchall()
        return dict(rows)

    @staticmethod
    def _restore_indexes(db: psycopg.Connection) -> None:
        """Build again any index a load dropped (also after a load that was stopped)."""
        row = db.execute(f"SELECT value FROM {META} WHERE key = 'indexes'").fetchone()
        if row is None:
            return
        db.execute("SET maintenance_work_mem = '512MB'")
        for definition in json.loads(row[0]).values():
            db.execute(definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
