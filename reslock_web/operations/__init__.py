"""Operations: what an operator asks of a limit (release, repair, set limit, activate,
deactivate), planned, queued, done by a Celery worker and audited.

- `plans`: what each operation will do and whether it is safe (reads our tables only).
- `requests`: asking for one: the operation row and the holder snapshot the worker acts on.
- `jobs`: doing it in the worker: claim, act, record; the acting is in
  - `release` (freeing a holder's slot: what happens on Release) and
  - `changes` (set limit, activate, deactivate, repair drift), sharing `outcome`.
- `fence`: keeping a limit closed while a revoked holder stops (the placeholder slot).
- `queue`: handing operations to Celery after commit.
- `sweep`: the beat job that catches what fell between (lost messages, dead workers, fences).
- `policy`: safe self-healing, off by default: stale holders released by a policy.

May import: `reslock_web.sync`, `reslock_web.status`, `reslock_web.models`,
`reslock_web.prefect_io`. Celery tasks are sent by name, so nothing here imports `tasks`.
"""
