"""What changed on a board page since the browser last drew it.

The page keeps, in one hidden input, what it shows: the board's version, each row's pk and the
time that row last changed, a digest of the facet counts and a digest of the banner. Every
second it sends that back. When neither the version nor the banner moved, the answer is an
empty 204 after two small reads, which is what nearly every poll gets; otherwise the server
compares the rest with the tables and answers with the rows that changed or, when rows came,
went or moved, with the whole result list.

Comparing each row's own `changed_at`, rather than keeping one cursor, matters: a sync stamps
its rows with the time it read Prefect and commits a second or two later, so a cursor taken
in between would step over them.

A row's "lease lost" chip moves with the clock (a loss leaves the 24-hour window) and with
events, not with the row: its mark's key rides in the row's stamp (`MARK`), so a poll that
finds the marks of its rows changed redraws those rows, however the version stands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from reslock_web.models import SyncState
from reslock_web.sync.health import Freshness

MAX_ROWS = 500  # a page has 50; anything longer is not ours
MARK = "L"  # between a row's version and its lease mark: no base-36 digit is upper case


def version(when: datetime) -> str:
    """A row's version as the browser keeps it: microseconds since the epoch, base 36."""
    micros = int(when.timestamp() * 1_000_000)
    return _base36(micros)


def stamp(when: datetime, mark: str = "") -> str:
    """A row's version with its lease mark's key, when it has one."""
    return f"{version(when)}{MARK}{mark}" if mark else version(when)


def digest(*parts: object) -> str:
    return hashlib.blake2s(repr(parts).encode(), digest_size=6).hexdigest()


def facets_digest(counts: dict[str, int]) -> str:
    return digest(sorted(counts.items()))


def banner_digest(health: Freshness, attention: list[tuple[str, str, int]]) -> str:
    """Everything the banner says except ages, which the browser ticks on by itself."""
    return digest(
        attention,
        health.last_ok.pk if health.last_ok else None,
        health.last_finished.pk if health.last_finished else None,
        health.failing,
        health.throttled,
        health.retry_at,
        health.stale,
        health.worker_late,
        health.worker.pk if health.worker else None,
        health.listener_down,
        bool(health.listener and health.listener.detail.get("connected")),
    )


@dataclass(frozen=True)
class Seen:
    version: int  # the board's version (SyncState "board") when drawn
    total: int  # rows matching the filters, on every page: the caption and the pager
    rows: tuple[tuple[int, str], ...]
    facets: str
    banner: str

    def encode(self) -> str:
        rows = ",".join(f"{pk}:{stamp}" for pk, stamp in self.rows)
        return f"{self.version}.{self.total}.{self.facets}.{self.banner}.{rows}"

    @classmethod
    def of(
        cls,
        board: int,
        total: int,
        versions: list[tuple[int, datetime]],
        facets: str,
        banner: str,
        marks: dict[int, str] | None = None,
    ) -> Seen:
        """`marks`: the key of each row's lease mark, by pk (rows without one left out)."""
        marks = marks or {}
        rows = tuple((pk, stamp(when, marks.get(pk, ""))) for pk, when in versions)
        return cls(board, total, rows, facets, banner)

    def marked_as(self, marks: dict[int, str]) -> bool:
        """Whether every row was drawn with the lease mark `marks` gives it now."""
        return all(drawn.partition(MARK)[2] == marks.get(pk, "") for pk, drawn in self.rows)

    @classmethod
    def parse(cls, value: str) -> Seen | None:
        """The state a page sent back, or None when it is not one we wrote (redraw all)."""
        parts = value.split(".")
        if len(parts) != 5 or len(value) > MAX_ROWS * 40:
            return None
        board, total, facets, banner, rows = parts
        if not (_number(board) and _number(total)):
            return None
        pairs = []
        for item in filter(None, rows.split(",")):
            pk, _, stamp = item.partition(":")
            if not _number(pk) or not (stamp.isascii() and stamp.isalnum()):
                return None
            pairs.append((int(pk), stamp))
        return cls(int(board), int(total), tuple(pairs), facets, banner)


@dataclass(frozen=True)
class Changes:
    """What a refresh must redraw."""

    everything: bool = False
    rows: tuple[int, ...] = ()
    facets: bool = False
    banner: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.rows or self.facets or self.banner)


def compare(seen: Seen | None, now: Seen) -> Changes:
    if (
        seen is None
        or seen.total != now.total
        or [pk for pk, _ in seen.rows] != [pk for pk, _ in now.rows]
    ):
        return Changes(everything=True)
    return Changes(
        rows=tuple(
            pk for (pk, old), (_, new) in zip(seen.rows, now.rows, strict=True) if old != new
        ),
        facets=seen.facets != now.facets,
        banner=seen.banner != now.banner,
    )


def board_version() -> int:
    found = SyncState.objects.filter(name=SyncState.BOARD).values_list("version", flat=True).first()
    return found or 0


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 19


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out
