"""The sync's ways past Django's model layer for the thousands of limits a pass handles.

Each is measured by bench/sync_bench.py (a full sync and a no-change resync of 5,000 limits,
and where their time goes). The no-change resync reads every stored limit as a tuple of its
COMPACT columns, read by position (`row[5]`), and builds whole rows only for the limits likely
busy (`read_stored`); the write leaves alone the free limits that nothing touched (`is_quiet`).
The full sync into empty tables inserts new limits through a hand-rolled INSERT that recovers
their ids (`NewLimits`, `insert_limits`) rather than bulk_create. They live apart so that the
rest of the write reads as plain Django; tests/sync/test_sync_fast_paths.py checks that the INSERT
stores what bulk_create stores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field, Model

from reslock_web.models import Holder, Limit, Status, Waiter
from reslock_web.prefect_io.records import LimitInfo
from reslock_web.sync.queries import BATCH, chunked, of_limits
from reslock_web.sync.snapshot import Snapshot, Stored

COMPACT = [
    "pk",
    "prefect_id",
    "name",
    "limit",
    "active",
    "active_slots",
    "slot_decay_per_second",
    "prefect_updated",
    "status",
    "drift_since",
    "gone_at",
    "holders_checked_at",
    "deployment_id",
]


def read_stored(limit_pks: list[int] | None = None) -> Stored:
    """Every stored limit with its holders and waiters, or these limits only (a single-limit
    pass compares and writes nothing else)."""
    compact = {
        row[1]: row for row in of_limits(Limit.objects, limit_pks, "pk").values_list(*COMPACT)
    }
    holders = _grouped(of_limits(Holder.objects.all(), limit_pks))
    waiters = _grouped(of_limits(Waiter.objects.all(), limit_pks))
    people = holders.keys() | waiters.keys()
    quiet = (Status.FREE, Status.INACTIVE)
    # (pk, _, _, _, _, slots, _, _, status, drift_since, gone_at, ...): likely busy again.
    likely = [
        row[0]
        for row in compact.values()
        if row[5] or row[8] not in quiet or row[9] is not None or row[10] or row[0] in people
    ]
    rows = {
        row.prefect_id: row
        for pk_chunk in chunked(likely)
        for row in Limit.objects.filter(pk__in=pk_chunk)
    }
    return Stored(compact, holders, waiters, rows)


def _grouped(rows: Any) -> dict[int, dict[str, Model]]:
    grouped: dict[int, dict[str, Model]] = defaultdict(dict)
    for row in rows:
        grouped[row.limit_id][row.key] = row
    return grouped


def is_quiet(info: LimitInfo, stored: tuple | None, snapshot: Snapshot, holders, waiters) -> bool:
    """A free limit that nothing touched since the last pass: no need to judge or write it."""
    if (
        stored is None
        or info.active_slots
        or snapshot.claims.get(info.id)
        or snapshot.queued.get(info.id)
    ):
        return False
    pk, _, name, limit, active, slots, decay, updated, status, drift_since, gone_at, *_ = stored
    return (
        not holders.get(pk)
        and not waiters.get(pk)
        and gone_at is None
        and drift_since is None
        and (name, limit, active, slots, decay, updated)
        == (
            info.name,
            info.limit,
            info.active,
            info.active_slots,
            info.slot_decay_per_second,
            info.updated,
        )
        and status == (Status.FREE if info.active else Status.INACTIVE)
    )


class NewLimits:
    """Limits with their fields' defaults, built the way rows read from the database are:
    keyword construction looks every field's default up one by one, a cost at thousands."""

    def __init__(self) -> None:
        fields = Limit._meta.concrete_fields
        self._values = [None if callable(f.default) else f.get_default() for f in fields]
        # Callable defaults (a new list, the current time) are called for each row.
        self._made = [(i, f) for i, f in enumerate(fields) if callable(f.default)]

    def __call__(self, prefect_id: UUID, now: datetime) -> Limit:
        values = list(self._values)
        for index, field in self._made:
            values[index] = field.get_default()
        row = Limit(*values)
        row.prefect_id, row.first_seen, row.changed_at = prefect_id, now, now
        return row


def insert_limits(rows: list[Limit]) -> None:
    """Insert new limits, then read back their ids by Prefect id.

    A first sync inserts thousands: bulk_create passes every value of every row through the
    field API one call at a time, which costs more than the database's own work. Here each
    column's conversion is chosen once, and plain values (text, numbers, flags) go as they are.
    """
    if not rows:
        return
    db = connections[DEFAULT_DB_ALIAS]
    fields = [field for field in Limit._meta.concrete_fields if not field.primary_key]
    convert = [(i, how) for i, field in enumerate(fields) if (how := _db_value(field, db))]
    read = attrgetter(*(field.attname for field in fields))
    params = []
    for row in rows:
        values = list(read(row))
        for index, how in convert:
            if values[index] is not None:
                values[index] = how(values[index])
        params.append(values)
    quote = db.ops.quote_name
    table, pk = quote(Limit._meta.db_table), quote(Limit._meta.pk.column)
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    with db.cursor() as cursor:
        # Only the sync writes limits, one at a time (its lock): every id above the highest
        # one now is a row inserted here.
        cursor.execute(f"SELECT MAX({pk}) FROM {table}")
        highest = cursor.fetchone()[0] or 0
        for chunk in chunked(params, BATCH):
            cursor.executemany(sql, chunk)
        cursor.execute(
            f"SELECT {quote(Limit._meta.get_field('prefect_id').column)}, {pk} FROM {table} "
            f"WHERE {pk} > %s",
            [highest],
        )
        pks = dict(cursor.fetchall())  # keyed by the stored form of the Prefect id
    stored_id = fields.index(Limit._meta.get_field("prefect_id"))
    for row, values in zip(rows, params, strict=True):
        row.pk = pks[values[stored_id]]
        row._state.adding = False
        row._state.db = db.alias


# Columns whose Python value is what every database driver takes as it is.
_PLAIN = {"CharField", "TextField", "BooleanField", "FloatField", "PositiveIntegerField"}


def _db_value(field: Field, db: Any) -> Callable[[Any], Any] | None:
    """How one column's (non-null) values become what the driver takes, as the field would
    turn them; None for a column whose values go as they are."""
    kind = field.get_internal_type()
    if kind in _PLAIN:
        return None
    if kind == "UUIDField" and not db.features.has_native_uuid_field:
        return lambda value: value.hex
    if kind == "DateTimeField":
        adapt = db.ops.adapt_datetimefield_value
        seen: dict[datetime, Any] = {}  # first_seen and changed_at are one value for all rows

        def moment(value: datetime) -> Any:
            if value not in seen:
                seen[value] = adapt(value)
            return seen[value]

        return moment
    prepare = field.get_db_prep_save
    return lambda value: prepare(value, db)
