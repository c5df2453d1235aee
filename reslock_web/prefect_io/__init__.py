"""Prefect I/O: every call reslock makes to Prefect's REST API, and links into Prefect's UI.

- `api`: the adapter (`PrefectAPI`): typed reads and writes, errors in one shape, 429 honoured.
- `budget`: the request budget every call goes through (RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE).
- `links`: URLs of runs, deployments and limits in Prefect's UI.

May import: `reslock_web.env`, `reslock_web.security`, the helper's `reslock.protocol`. Nothing
here touches our tables.
"""
