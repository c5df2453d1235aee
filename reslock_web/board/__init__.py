"""The board: the lock board's rows, searched, filtered and sorted, and its one-second poll.

- `query`: search, filters and sorts over our tables (`BoardQuery`).
- `rows`: one resource's row as HTML (the board's hot path; see bench/board_bench.py).
- `cache`: the counted and drawn result lists, kept per board version and query.
- `poll`: what changed since the browser's last poll (the live updates).
- `runs`: one flow run's holds and waits and why it waits (its page and its JSON).

May import: `reslock_web.sync` (freshness), `reslock_web.status`, `reslock_web.models`,
`reslock_web.prefect_io` (links).
"""
