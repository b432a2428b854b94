"""Token revocation: durable in the auth database, fast in Redis.

Three kinds of revocation, each written to the database in the caller's
transaction:

- a revoked access-token id (logout): a ``revoked_tokens`` row, kept until the
  token would have expired;
- a revoked login session (logout, refresh reuse, a session's end): its
  ``login_sessions.revoked_at``;
- a per-user cut-off (logout-all, password change, deactivation, a role
  taken away): ``users.revoked_before``, "tokens issued before this epoch
  second are dead".

The token check reads ids and sessions from Redis, written there before the
request commits, so a revocation is in force when the request reports success.
The cut-off is read from the user's row, which every token check reads anyway.

A Redis that lost its keys (it restarted empty, was flushed, or failed over to
a replica that had not caught up) is refilled from the database before it
answers a check: a marker key holds the ``run_id`` of the server that was
filled. Each check is one script on the server that answers it, which
compares the marker with that server's own ``run_id``: a marker that is
missing, or names another server (a replica holds its primary's marker),
means the keys cannot be trusted. The server is asked about itself, never a
process's idea of which server it reached last, so behind Redis Sentinel,
whose primary changes under the connection pool, no check is answered from
an unfilled server even while the sentinels disagree.

The cut-off is a whole second one past the moment of revocation, and tokens of
that user are never issued with an ``iat`` below it. So a token issued earlier
in the same second is dead while the pair issued right after (a password
change's, a new login's) is alive, though ``iat`` has only one-second
precision. The same integer goes out as ``revoked_before`` in the
``sessions_revoked`` sync, so the user service draws the same line.

Several revocations of one user within a second each move the cut-off one
second further. It is never let run more than ``MAX_CUTOFF_AHEAD`` seconds
ahead of the clock: a revocation that would push it further waits, holding
the user's row, until the clock has caught up. Otherwise the tokens issued
next, whose ``iat`` is the cut-off, would come out "not yet valid" beyond the
clock leeway, here and at the user service.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from auth_app.config import AuthSettings
from auth_app.models import LoginSession, RevokedToken, User
from common.db import insert_ignoring_conflict, utcnow

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2
# How far the per-user cut-off may run ahead of the clock (never beyond the
# clock leeway): one second for a revocation, one more for a second revocation
# in the same second. Leaves the rest of the leeway for clock skew between hosts.
MAX_CUTOFF_AHEAD = 2


def connect_redis(settings: AuthSettings, **options: Any) -> redis.Redis:
    """A client of the service's Redis, with short timeouts (a dead Redis answers 503).

    With ``REDIS_SENTINELS`` every new connection goes to the server the
    sentinels name as the primary at that moment, so the client follows a
    failover; a connection to a primary that went away or was demoted fails
    once (503) and the next one reaches the new primary.
    """
    if settings.redis_sentinel is not None:
        sentinel = settings.redis_sentinel.connect(REDIS_TIMEOUT_SECONDS)
        return cast(redis.Redis, sentinel.master_for(settings.redis_sentinel.master, **options))
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        **options,
    )


# The token check, answered by one server about itself: -1 when the marker does
# not name the server that runs the script (it lost its keys, or is another
# server than the one that was filled), else how many of the keys exist.
_CHECK = """
local marker = redis.call('GET', KEYS[1])
if marker ~= string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') then return -1 end
if #KEYS < 2 then return 0 end
return redis.call('EXISTS', unpack(KEYS, 2))
"""
# The last step of a refill: the marker names the server that holds the keys.
_MARK = """
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
redis.call('SET', KEYS[1], run_id)
return run_id
"""
# A check that finds a server unfilled refills it and asks again; more rounds
# than this mean the primary keeps changing under it (a 503, never a guess).
REFILL_ROUNDS = 3


class RevocationStore:
    """Revoked token ids, revoked sessions and per-user cut-offs.

    ``database`` is where a Redis that lost its keys is refilled from; without
    it (the auth worker only revokes) nothing is refilled.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        access_ttl: int,
        leeway: int,
        database: sessionmaker[Session] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.leeway = leeway
        # An entry must outlive every token it can concern, leeway included.
        self.ttl = access_ttl + leeway + 1
        self.database = database
        self._marker = f"{prefix}revocations:filled"
        self._check = client.register_script(_CHECK)
        self._refilling = threading.Lock()

    @classmethod
    def connect(
        cls, settings: AuthSettings, database: sessionmaker[Session] | None = None, **options: Any
    ) -> RevocationStore:
        """The store the web app and the auth worker use, on a Redis client of its own."""
        return cls(
            connect_redis(settings, **options),
            settings.redis_key_prefix,
            access_ttl=settings.access_token_ttl,
            leeway=settings.jwt_leeway_seconds,
            database=database,
        )

    # -- keys ----------------------------------------------------------------
    def _jti(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def _sid(self, sid: str) -> str:
        return f"{self.prefix}revoked:sid:{sid}"

    # -- revoking ------------------------------------------------------------
    def revoke_token(self, session: Session, jti: str, exp: float) -> None:
        """Kill one access token until it would have expired anyway.

        The rows of tokens that have expired since are deleted on the way, so
        the table holds only what a refill still needs.
        """
        expires = datetime.fromtimestamp(exp + self.leeway, UTC)
        session.execute(delete(RevokedToken).where(RevokedToken.expires_at <= utcnow()))
        insert_ignoring_conflict(session, RevokedToken, jti=jti, expires_at=expires)
        remaining = max(1, min(self.ttl, math.ceil(exp - time.time()) + self.leeway + 1))
        self.client.set(self._jti(jti), "1", ex=remaining)

    def revoke_session(self, family: LoginSession, now: datetime) -> None:
        """End one login session: its refresh tokens and every access token of it die."""
        if family.revoked_at is None:
            family.revoked_at = now
        self.client.set(self._sid(family.id), "1", ex=self.ttl)

    def revoke_user(self, session: Session, user: User) -> int:
        """Kill every access token of ``user`` issued until now; return the cut-off epoch.

        One statement moves the cut-off to ``max(now + 1, previous + 1)``, so
        it only moves forward, and two revocations in the same second both
        count: the second moves it one further, past the tokens issued right
        after the first (they carry its value). When that puts it more than
        ``MAX_CUTOFF_AHEAD`` seconds ahead of the clock, this waits (the row
        locked, so concurrent revocations of this user queue behind it) until
        it no longer is.
        """
        floor = math.floor(time.time()) + 1
        following = func.coalesce(User.revoked_before, 0) + 1
        cutoff = session.scalars(
            update(User)
            .where(User.id == user.id)
            .values(revoked_before=case((following > floor, following), else_=floor))
            .returning(User.revoked_before)
            .execution_options(synchronize_session=False)
        ).one()
        # Tokens issued next in this transaction must see it (see issued_at).
        set_committed_value(user, "revoked_before", cutoff)
        ahead = int(cast(int, cutoff)) - time.time() - min(MAX_CUTOFF_AHEAD, self.leeway)
        if ahead > 0:
            log.info("user %s: cut-off %.1fs ahead of the clock, waiting", user.id, ahead)
            time.sleep(ahead)
        return int(cast(int, cutoff))

    # -- checking ------------------------------------------------------------
    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether a verified access token's id or session was revoked.

        The server that answers also says whether it is the one that was
        filled; if not, it is refilled from the database and asked again, so
        no answer ever comes from a server that lost revocations. The
        per-user cut-off is the caller's to compare with ``iat`` (see
        :func:`issued_before_cutoff`).
        """
        sid = claims.get("sid")
        keys = [self._jti(str(claims["jti"]))] + ([self._sid(str(sid))] if sid else [])
        if self.database is None:
            return bool(self.client.exists(*keys))
        for _ in range(REFILL_ROUNDS):
            revoked = int(self._check(keys=[self._marker, *keys]))
            if revoked >= 0:
                return revoked > 0
            self.refill(unless_filled=True)
        raise redis.exceptions.ConnectionError(
            f"Redis was refilled {REFILL_ROUNDS} times and still answered from an unfilled server"
        )

    # -- refilling -----------------------------------------------------------
    def refill(self, *, unless_filled: bool = False) -> None:
        """Write every revocation that may still concern a live token back to Redis.

        The keys and the marker go over one connection, so the marker names
        the server that holds them: a check reads the marker on the server it
        asks and compares it with that server's own ``run_id``. With
        ``unless_filled``, a server another thread has filled meanwhile is
        left alone (a failover sends every thread here at once).
        """
        if self.database is None:
            return
        with self._refilling:
            if unless_filled and int(self._check(keys=[self._marker])) >= 0:
                return
            now = utcnow()
            with self.database() as session:
                tokens = session.execute(
                    select(RevokedToken.jti, RevokedToken.expires_at).where(
                        RevokedToken.expires_at > now
                    )
                ).all()
                sessions = session.execute(
                    select(LoginSession.id, LoginSession.revoked_at).where(
                        LoginSession.revoked_at > now - timedelta(seconds=self.ttl)
                    )
                ).all()
            pipe = self.client.pipeline(transaction=False)
            for jti, expires_at in tokens:
                pipe.set(self._jti(jti), "1", ex=_seconds_until(expires_at, now))
            for sid, revoked_at in sessions:
                until = cast(datetime, revoked_at) + timedelta(seconds=self.ttl)
                pipe.set(self._sid(sid), "1", ex=_seconds_until(until, now))
            pipe.eval(_MARK, 1, self._marker)
            *_, run_id = pipe.execute()
        log.warning(
            "revocations refilled from the database: %d tokens, %d sessions (Redis server %s)",
            len(tokens),
            len(sessions),
            run_id.decode() if isinstance(run_id, bytes) else run_id,
        )


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def issued_at(user: User) -> int:
    """The ``iat`` of a token issued to ``user`` now: never below the user's cut-off."""
    return max(math.floor(time.time()), user.revoked_before or 0)


def issued_before_cutoff(claims: dict[str, Any], user: User) -> bool:
    """Whether the token was issued before the user's last revocation of everything."""
    return user.revoked_before is not None and claims["iat"] < user.revoked_before
