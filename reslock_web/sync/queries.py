"""Query helpers shared by the modules that read and write our tables: statements in batches
(SQLite takes at most 999 parameters in one), and the rows of some limits only (a pass over a few
limits reads and writes nothing of the others).
"""

from __future__ import annotations

from typing import Any

BATCH = 500  # rows per bulk INSERT or UPDATE


def chunked(items: list, size: int = 900):
    # SQLite allows at most 999 parameters in one query.
    for start in range(0, len(items), size):
        yield items[start : start + size]


def of_limits(rows: Any, limit_pks: list[int] | None, field: str = "limit_id") -> Any:
    if limit_pks is None:
        return rows
    return rows.filter(**{f"{field}__in": limit_pks})
