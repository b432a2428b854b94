"""Token revocation state in Redis, read on every authenticated request.

Three kinds of entry, each expiring when no token it could concern is alive:
a revoked access-token id, a revoked session family, and a per-user cut-off
("tokens issued before this epoch second are dead").

The cut-off is a whole second one past the moment of revocation, and tokens
of that user are never issued with an ``iat`` below the user's cut-off. So a
token issued earlier in the same second is dead while the pair issued right
after (password change, a new login) is alive, though ``iat`` has only
one-second precision. The same integer goes out as ``revoked_before`` in the
``sessions_revoked`` sync, so the user service draws the same line.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import redis

from auth_app.config import AuthSettings

REDIS_TIMEOUT_SECONDS = 2

# Atomically: cut-off = max(now + 1, previous + 1), so it only ever moves forward.
_RAISE_CUTOFF = """
local previous = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = math.max(tonumber(ARGV[1]), previous + 1)
redis.call('SET', KEYS[1], cutoff, 'EX', tonumber(ARGV[2]))
return cutoff
"""


def connect_redis(settings: AuthSettings, **options: Any) -> redis.Redis:
    """A client of the service's Redis, with short timeouts (a dead Redis answers 503)."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        **options,
    )


class RevocationStore:
    """Revoked jtis, revoked sessions and per-user cut-offs under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, *, access_ttl: int, leeway: int) -> None:
        self.client = client
        self.prefix = prefix
        # An entry must outlive every token it can concern, leeway included.
        self.leeway = leeway
        self.ttl = access_ttl + leeway + 1

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: AuthSettings) -> RevocationStore:
        """The store the web app, the CLI and the auth worker share."""
        return cls(
            client,
            settings.redis_key_prefix,
            access_ttl=settings.access_token_ttl,
            leeway=settings.jwt_leeway_seconds,
        )

    def _jti(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def _sid(self, sid: str) -> str:
        return f"{self.prefix}revoked:sid:{sid}"

    def _cutoff(self, user_id: str) -> str:
        return f"{self.prefix}revoked_before:{user_id}"

    def revoke_token(self, jti: str, exp: float) -> None:
        """Kill one access token until it would have expired anyway."""
        remaining = max(1, min(self.ttl, math.ceil(exp - time.time()) + self.leeway + 1))
        self.client.set(self._jti(jti), "1", ex=remaining)

    def revoke_session(self, sid: str) -> None:
        """Kill every access token of one session family."""
        self.client.set(self._sid(sid), "1", ex=self.ttl)

    def revoke_user(self, user_id: str) -> int:
        """Kill every access token of the user issued until now; return the cut-off epoch.

        A second revocation in the same second moves the cut-off one further,
        past the tokens issued right after the first (they carry its value).
        """
        cutoff = self.client.eval(
            _RAISE_CUTOFF, 1, self._cutoff(user_id), str(math.floor(time.time()) + 1), str(self.ttl)
        )
        return int(cast(int, cutoff))

    def issued_at_for(self, user_id: str, now: float | None = None) -> int:
        """The ``iat`` for a token issued now: never below the user's cut-off."""
        issued = math.floor(time.time() if now is None else now)
        # A synchronous client: the answer itself, never an awaitable.
        cutoff = cast(bytes | None, self.client.get(self._cutoff(user_id)))
        return max(issued, int(cutoff)) if cutoff is not None else issued

    def is_revoked(self, claims: dict) -> bool:
        """Whether a verified access token was revoked by id, session or cut-off."""
        pipe = self.client.pipeline()
        pipe.exists(self._jti(str(claims["jti"])))
        sid = claims.get("sid")
        pipe.exists(self._sid(str(sid)) if sid else self._sid("-"))
        pipe.get(self._cutoff(str(claims["sub"])))
        jti_revoked, sid_revoked, cutoff = pipe.execute()
        if jti_revoked or (sid and sid_revoked):
            return True
        return cutoff is not None and claims["iat"] < int(cutoff)
