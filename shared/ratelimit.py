"""Token-bucket rate limits, kept in process memory (each replica limits its own share of the traffic)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Refusal:
    """A request over its limit: which limit, and when to come back."""

    limit: int
    retry_after_seconds: int


class RateLimiter:
    """At most `per_minute` requests per key, refilled continuously; bursts up to the full minute's allowance."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._max_keys = max_keys

    def take(self, scope: str, key: str, *, per_minute: int) -> Refusal | None:
        """Spend one token for `key` in `scope`; a Refusal if none is left."""
        now = self._clock()
        rate = per_minute / 60.0
        bucket = self._buckets.get((scope, key))
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()  # bounded memory beats perfect accounting under an address flood
            bucket = self._buckets[(scope, key)] = _Bucket(tokens=float(per_minute), updated=now)
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return Refusal(limit=per_minute, retry_after_seconds=max(1, math.ceil((1.0 - bucket.tokens) / rate)))
