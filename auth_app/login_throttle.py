"""Failed-password throttle per account and client address, in Redis.

Wrong passwords are counted per account *and* address: after ``max_failures``
inside a window (counted from the first failure) that address answers 429 for
that account until the window has passed, while the account's owner at any
other address is not held up. There is no permanent lockout, and a right
password from an address clears that address's count.

Each attempt is counted before its password is checked, in one atomic step
with the check of the limit, so a burst of parallel guesses gets no more than
``max_failures`` of them checked; a right password then takes its own attempt
back by clearing the count.

A key is a digest of the account and the address, of a fixed size whatever a
client sends, and expires with its window: Redis holds at most one small key
per account and address that failed within the last window.
"""

from __future__ import annotations

import hashlib

import redis

# One attempt taken back, never below zero, never creating a key that is gone.
_FORGIVE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return count
"""


class LoginThrottle:
    """Count failed passwords per (account, address) inside a fixed window."""

    def __init__(self, client: redis.Redis, prefix: str, *, max_failures: int, window: int):
        self.client = client
        self.prefix = prefix
        self.max_failures = max_failures
        self.window = window

    def _key(self, account: str, address: str) -> str:
        digest = hashlib.sha256(f"{account}\0{address}".encode("utf-8", "surrogatepass"))
        return f"{self.prefix}login_failures:{digest.hexdigest()}"

    def attempt(self, account: str, address: str) -> int | None:
        """Count one password attempt for ``account`` from ``address``.

        Returns the seconds to wait when the limit is already reached (the
        password must then not be checked), else None: the attempt counts as a
        failure unless :meth:`clear` follows it.
        """
        if self.max_failures <= 0:
            return None
        key = self._key(account, address)
        pipe = self.client.pipeline()  # MULTI/EXEC: the count and its window are set together
        pipe.incr(key)
        pipe.expire(key, self.window, nx=True)
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
        if int(count) <= self.max_failures:
            return None
        return max(int(ttl), 1)

    def forgive(self, account: str, address: str) -> None:
        """Take back one attempt of ``account`` from ``address``, keeping the failures before it.

        A right password of an account with MFA on: the login is not done, so
        the count of wrong codes (and passwords) must not be cleared by it.
        """
        if self.max_failures > 0:
            self.client.eval(_FORGIVE, 1, self._key(account, address))

    def clear(self, account: str, address: str) -> None:
        """Forget the failures of ``account`` from ``address`` (its right password came)."""
        if self.max_failures > 0:
            self.client.delete(self._key(account, address))
