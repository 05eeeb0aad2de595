"""Back-off for failed logins, per client address.

A wrong token (on the login form, or as a bearer token) counts as a failure of the address it came
from. The first `free` failures cost nothing; each further one locks the address out for a delay that
doubles (1 s, 2 s, 4 s ... at most `max_delay_s`). While locked out, the address gets 429 with
Retry-After and its tokens are not even checked, so a burst of guesses gets one answer per delay. A
success resets the address; an address without failures for `forget_after_s` is forgotten.

The counts are kept in the API process's memory: with `obow lab serve --workers N` each process keeps
its own (an attacker gets N times the attempts), and a restart forgets them. API tokens carry 256
random bits, so this is defence in depth against guessing, not what keeps them secret.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        free: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        forget_after_s: float = 900.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base_delay_s, self.max_delay_s = free, base_delay_s, max_delay_s
        self.forget_after_s, self.max_addresses = forget_after_s, max_addresses
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds (rounded up) the address must still wait, or None if it may try now."""
        with self._lock:
            entry = self._entries.get(address)
            now = self._clock()
            if entry is None:
                return None
            if now - entry.last_failure > self.forget_after_s:
                del self._entries[address]
                return None
            wait = entry.locked_until - now
            return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            entry = self._entries.pop(address, None) or _Entry()
            if now - entry.last_failure > self.forget_after_s:
                entry = _Entry()
            entry.failures += 1
            entry.last_failure = now
            over = entry.failures - self.free
            if over >= 0:
                entry.locked_until = now + min(self.max_delay_s, self.base_delay_s * 2 ** min(over, 30))
            self._entries[address] = entry  # most recent last
            while len(self._entries) > self.max_addresses:  # bounded memory: the oldest goes first
                self._entries.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._entries.pop(address, None)
