"""Operations: what an operator asks of a limit (release, repair, set limit, activate,
deactivate), planned, queued, done by a Celery worker and audited.

- `plans`: what each operation will do and whether it is safe (reads our tables only).
- `jobs`: doing it in the worker: claim, re-read Prefect, act, record.
- `fence`: keeping a limit closed while a revoked holder stops (the placeholder slot).
- `queue`: handing operations to Celery after commit, and the sweep that catches what fell
  between.

May import: `reslock_web.sync`, `reslock_web.status`, `reslock_web.models`,
`reslock_web.prefect_io`. Celery tasks are sent by name, so nothing here imports `tasks`.
"""
