"""Bearer-token guards for Flask views, shared by both services.

Each app installs a :class:`BearerAuth` with its verifier and its own
revocation check (Redis at the auth service, the synced state at the user
service). Views use :func:`login_required`; the verified claims are on
``g.claims``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from flask import Flask, current_app, g, request
from flask_smorest import Blueprint, abort

from common.tokens import InvalidToken, TokenVerifier


class AccountDisabled(Exception):
    """The token is genuine but its user may not act (403)."""


class DependencyUnavailable(Exception):
    """Revocation state cannot be read; the request is refused with 503, never let through."""


RevocationCheck = Callable[[dict], dict | None]
#: Told the outcome of every token check: ``ok``, ``missing``, an InvalidToken's
#: reason, ``account_disabled`` or ``unavailable`` (common.metrics' recorders).
CheckOutcome = Callable[[str], None]
View = Callable[..., Any]


def _ignore(_outcome: str) -> None:
    """An outcome nobody records."""


class BearerAuth:
    """Verify the request's Bearer token, then ask the app whether it is still good.

    ``check(claims)`` may raise InvalidToken (401), AccountDisabled (403) or
    DependencyUnavailable (503), and may return updated claims (fresher roles).
    ``on_outcome`` hears how every check ended (the app's metrics).
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        check: RevocationCheck | None = None,
        realm: str = "api",
        on_outcome: CheckOutcome = _ignore,
    ):
        self.verifier = verifier
        self.check = check
        self.realm = realm
        self.on_outcome = on_outcome

    def init_app(self, app: Flask) -> None:
        """Make this the app's bearer guard."""
        app.extensions["bearer_auth"] = self

    def _challenge(self, error: str | None = None, description: str | None = None) -> dict:
        value = f'Bearer realm="{self.realm}"'
        if error:
            value += f', error="{error}"'
        if description:
            value += f', error_description="{description}"'
        return {"WWW-Authenticate": value}

    def claims_of(self, token: str) -> dict:
        """The claims of a live access token, after the app's check (which may refresh them).

        Raises InvalidToken, AccountDisabled or DependencyUnavailable.
        """
        try:
            claims = self.verifier.verify(token)
            if self.check is not None:
                claims = self.check(claims) or claims
        except InvalidToken as error:
            self.on_outcome(error.reason)
            raise
        except AccountDisabled:
            self.on_outcome("account_disabled")
            raise
        except DependencyUnavailable:
            self.on_outcome("unavailable")
            raise
        self.on_outcome("ok")
        return claims

    def authenticate(self) -> dict:
        """Return the verified claims of the request's access token, or abort."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.on_outcome("missing")
            abort(401, message="Missing bearer token", headers=self._challenge())
        try:
            claims = self.claims_of(token.strip())
        except InvalidToken as error:
            abort(
                401,
                message=f"Invalid token: {error}",
                headers=self._challenge("invalid_token", str(error)),
            )
        except AccountDisabled as error:
            abort(403, message=str(error) or "Account disabled")
        except DependencyUnavailable as error:
            abort(503, message=str(error) or "Token revocation state unavailable")
        return claims


def has_role(role: str) -> bool:
    """Whether the current caller's token carries ``role``."""
    return role in g.get("claims", {}).get("roles", [])


def login_required(func: View | None = None, *, role: str | None = None) -> Any:
    """Require a valid access token (and ``role`` if given) before the view runs.

    Use as ``@login_required`` or ``@login_required(role="admin")``.
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.claims = bearer_auth().authenticate()
            if role is not None and not has_role(role):
                abort(403, message=f"Requires the {role} role")
            return view(*args, **kwargs)

        responses = {"401": {"description": "Missing, invalid or revoked token"}}
        # A genuine token of a disabled account is refused with 403 on every guarded view.
        forbidden = "Account disabled" + (f", or lacks the {role} role" if role else "")
        responses["403"] = {"description": forbidden}
        documented: View = Blueprint.doc(security=[{"bearerAuth": []}], responses=responses)(
            wrapper
        )
        return documented

    return decorator(func) if func is not None else decorator


def bearer_auth() -> BearerAuth:
    """The current app's bearer guard."""
    return cast(BearerAuth, current_app.extensions["bearer_auth"])
