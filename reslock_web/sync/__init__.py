"""Sync: reading Prefect's limits, holders and waiters, and writing them into our tables.

A pass reads everything first (`gather`, with `prefect_runs`, `claims` and `events`), then
writes the difference in one transaction (`store`, with `verdicts` and `fast_paths`); the two
sides share only `snapshot`'s plain data.

- `run`: the entry points: a complete sync and a per-limit re-sync (`sync_all`, `sync_limit`,
  `sync_limits`, `sync_limit_or_raise`), beat's periodic sync (`sync_with_settings`).
- `lock`: the sync lock (one sync at a time, across every worker and machine).
- `backfill`: a first sync's read of days of past lock events, in batches.
- `gather`: reading Prefect into a `Snapshot`: the listing, a pass's scope, the tag holders.
- `prefect_runs`: the flow and task runs a pass needs, their heartbeats, flow and deployment names.
- `claims`: who holds and who waits on each limit, from the tag holders, events and runs read.
- `events`: which lock events are read and from when; recording them (`record_events`).
- `store`: writing a snapshot into our tables (limits, holders, waiters), only what changed.
- `verdicts`: the verdict on each limit (status.diagnosis's rules), put on its row.
- `fast_paths`: the compact reads and the hand-rolled INSERT for thousands of limits
  (bench/sync_bench.py).
- `queries`: query helpers (batches under SQLite's parameter limit, rows of some limits).
- `snapshot`: what one pass works on (`Snapshot`, `Stored`, `StoredRuns`), plain data.
- `plan`: what beat's periodic sync does this time: everything, a few limits, or nothing.
- `listener`: Prefect's event stream, turned into per-limit re-syncs as events arrive.
- `deadlocks`: marking the resources on a cycle of runs waiting for each other across limits.
- `health`: how fresh the board is (the banner), and the sync's back-off.
- `retention`: pruning old events, runs and audit rows.
- `schedule`: Celery beat's periodic tasks.

May import: `reslock_web.status`, `reslock_web.models`, `reslock_web.prefect_io`.
"""
