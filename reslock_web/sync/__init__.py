"""Sync: reading Prefect's limits, holders and waiters, and writing them into our tables.

- `run`: a complete sync and a per-limit re-sync (`sync_all`, `sync_limit`), the sync lock.
- `store`: writing what was read (limits, holders, waiters, lock events) to our tables.
- `plan`: what beat's periodic sync does this time: everything, a few limits, or nothing.
- `listener`: Prefect's event stream, turned into per-limit re-syncs as events arrive.
- `health`: how fresh the board is (the banner), and the sync's back-off.
- `retention`: pruning old events, runs and audit rows.
- `schedule`: Celery beat's periodic tasks.

May import: `reslock_web.status`, `reslock_web.models`, `reslock_web.prefect_io`.
"""
