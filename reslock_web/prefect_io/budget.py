"""One request budget towards Prefect, shared by every reslock process.

Prefect Cloud limits the API requests of a whole workspace, flows included (250 a minute on the
smallest plan), and answers 429 beyond it. reslock's web processes, workers, beat and listener
therefore draw from one budget, `RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE`, kept in Redis (the
broker's) so that it holds across processes and machines; without Redis (`make run` on the
filesystem broker) each process keeps it alone.

The budget is a GCRA ("generic cell rate algorithm", a leaky bucket kept as one timestamp): a
request is due one `interval` after the previous one, with a burst of `burst` requests allowed
ahead. The interval is chosen so that no 60 s window holds more than the budget. A caller reserves its turn and sleeps until it; a caller whose
turn is further away than it may wait gets `Throttled` instead, having reserved nothing.

A 429 from Prefect (`hold_off`) stops every process until its `Retry-After` has passed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Throttled(Exception):
    """The budget has no turn for this request within the time the caller may wait."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the Prefect request budget has no room for {wait:.0f} s")
        self.wait = wait


@dataclass(frozen=True)
class Rate:
    interval: float  # seconds between requests, steady
    tolerance: float  # how far ahead of its due time a request may go (the burst)

    @classmethod
    def per_minute(cls, requests: int) -> Rate:
        burst = max(1, requests // 10)
        # A burst at t=0, then one every interval from t=interval on: a 60 s window holds
        # burst + ceil(60 / interval) - 1 requests, which this interval keeps at `requests`.
        interval = 60.0 / (requests - burst + 1)
        return cls(interval, (burst - 1) * interval)


def reserve(tat: float, hold_until: float, now: float, rate: Rate, max_wait: float) -> float | None:
    """The pure rule: returns the new theoretical arrival time (TAT), or None if the turn lies
    more than `max_wait` ahead. The caller's wait is `new_tat - rate.interval - rate.tolerance -
    now`, at least 0."""
    tat = max(tat, now, hold_until + rate.tolerance)
    allowed_at = tat - rate.tolerance
    if allowed_at - now > max_wait:
        return None
    return tat + rate.interval


# KEYS[1]: the TAT, KEYS[2]: hold-off-until; ARGV: interval, tolerance, max_wait (seconds),
# hold (seconds, for hold_off). Times are Redis's own clock, shared by every process.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local hold = tonumber(redis.call('GET', KEYS[2]) or '0')
tat = math.max(tat, now, hold + tolerance)
local allowed_at = tat - tolerance
if allowed_at - now > max_wait then
  return {'-1', tostring(allowed_at - now)}
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now + 60) * 1000))
return {'0', tostring(math.max(0, allowed_at - now))}
"""
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local hold = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > hold then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 0
"""


class Budget:
    def __init__(self, per_minute: int, redis_url: str | None = None, scope: str = "") -> None:
        self.rate = Rate.per_minute(per_minute)
        self.per_minute = per_minute
        digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
        self._keys = [
            f"reslock:prefect-budget:{digest}:tat",
            f"reslock:prefect-budget:{digest}:hold",
        ]
        self._lock = threading.Lock()
        self._tat = 0.0
        self._hold_until = 0.0
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=2, socket_connect_timeout=2
            )
        self._redis_failed_at = 0.0

    def take(self, max_wait: float = 60.0) -> float:
        """Waits for this request's turn; returns the seconds waited. Raises `Throttled`."""
        result = self._take_shared(max_wait)
        if result is None:
            result = self._take_local(max_wait)
        ok, wait = result
        if not ok:
            raise Throttled(wait)
        if wait > 0:
            time.sleep(wait)
        return wait

    def hold_off(self, seconds: float) -> None:
        """Prefect said 429: nobody sends before `seconds` from now."""
        seconds = max(0.0, min(seconds, 3600.0))
        with self._lock:
            self._hold_until = max(self._hold_until, time.time() + seconds)
        if self._shared():
            try:
                self._redis.eval(_HOLD, 1, self._keys[1], seconds)
            except Exception as error:
                self._lost(error)

    # --- where the turn is kept ----------------------------------------------------------
    def _shared(self) -> bool:
        # After a Redis failure, each process keeps its own budget for a while.
        return self._redis is not None and time.monotonic() - self._redis_failed_at > 30

    def _lost(self, error: Exception) -> None:
        if self._redis_failed_at == 0.0 or time.monotonic() - self._redis_failed_at > 30:
            log.warning("Prefect request budget: Redis unreachable (%s); kept per process", error)
        self._redis_failed_at = time.monotonic()

    def _take_shared(self, max_wait: float) -> tuple[bool, float] | None:
        if not self._shared():
            return None
        try:
            code, wait = self._redis.eval(
                _TAKE, 2, *self._keys, self.rate.interval, self.rate.tolerance, max_wait
            )
        except Exception as error:
            self._lost(error)
            return None
        return int(code) == 0, float(wait)

    def _take_local(self, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = time.time()
            tat = reserve(self._tat, self._hold_until, now, self.rate, max_wait)
            if tat is None:
                allowed_at = max(self._tat, now, self._hold_until + self.rate.tolerance)
                return False, allowed_at - self.rate.tolerance - now
            self._tat = tat
            return True, max(0.0, tat - self.rate.interval - self.rate.tolerance - now)


_budgets: dict[tuple, Budget] = {}
_budgets_lock = threading.Lock()


def for_settings(api_url: str) -> Budget | None:
    """The process's budget for this Prefect API, from the settings (None: unlimited)."""
    from django.conf import settings

    per_minute = settings.PREFECT_MAX_REQUESTS_PER_MINUTE
    if not per_minute:
        return None
    broker = settings.CELERY_BROKER_URL
    redis_url = broker if broker.startswith(("redis://", "rediss://", "unix://")) else None
    key = (api_url, per_minute, redis_url)
    with _budgets_lock:
        if key not in _budgets:
            _budgets[key] = Budget(per_minute, redis_url, scope=api_url)
        return _budgets[key]
