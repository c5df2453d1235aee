"""Status: what the board says about a lock, as pure rules over our tables' rows.

- `diagnosis`: the verdicts (held, waiting, stale, zombie, drift, uncounted, ...) and why.
- `explain`: those verdicts in words for a resource's page.
- `timeline`: a resource's recent holds, drawn as bars.
- `leases`: how long a holder's slot outlives it if it stops, and leases lost while held.
- `wait_for`: cross-lock deadlocks: runs that wait for each other in a circle, across limits.

May import: `reslock_web.models`, `reslock_web.prefect_io`. It never calls Prefect.
"""
