"""Who a credential belongs to, remembered for a few seconds so a polling client costs no key lookup.

Every request resolves its caller (`api.auth.current_caller`): one join of ``api_keys`` and ``tenants`` per
presented key, or with authentication off a get-or-create of the default tenant and a commit. For a status
poll that is most of the database work. The answer for a key (a tenant, or "not valid") is kept for
``ttl_s`` seconds, so a revoked key stops working within that time, and at most ``max_entries`` keys are kept
(the oldest go first), so a client spraying made-up keys cannot grow the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TTL_S = 5.0
DEFAULT_MAX_ENTRIES = 10_000


class CallerCache:
    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        """The remembered answer for ``key``, or ``compute()``'s (remembered for ``ttl_s``)."""
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]  # type: ignore[return-value]
        value = compute()
        self.put(key, value)
        return value

    def peek(self, key: str):
        """The remembered, unexpired answer for ``key``, or None."""
        with self._lock:
            hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    def put(self, key: str, value: object) -> None:
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
