"""Failed-login throttle per account, in Redis.

After ``max_failures`` failures inside a window the account answers 429 until
the window (counted from the first failure) has passed; there is no
permanent lockout, and a successful login clears the count.
"""

from __future__ import annotations

import redis


class LoginThrottle:
    """Count failed logins per account key inside a fixed window."""

    def __init__(self, client: redis.Redis, prefix: str, *, max_failures: int, window: int):
        self.client = client
        self.prefix = prefix
        self.max_failures = max_failures
        self.window = window

    def _key(self, account: str) -> str:
        return f"{self.prefix}login_failures:{account}"

    def retry_after(self, account: str) -> int | None:
        """Seconds until ``account`` may try again, or None when it may try now."""
        if self.max_failures <= 0:
            return None
        pipe = self.client.pipeline()
        pipe.get(self._key(account))
        pipe.ttl(self._key(account))
        count, ttl = pipe.execute()
        if count is None or int(count) < self.max_failures:
            return None
        return max(int(ttl), 1)

    def record_failure(self, account: str) -> None:
        """Count one failed login; the first failure starts the window."""
        if self.max_failures <= 0:
            return
        pipe = self.client.pipeline()
        pipe.incr(self._key(account))
        pipe.expire(self._key(account), self.window, nx=True)
        pipe.execute()

    def clear(self, account: str) -> None:
        """Forget the failures of ``account`` (after a successful login)."""
        self.client.delete(self._key(account))
