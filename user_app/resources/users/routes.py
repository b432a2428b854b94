"""``/api/v1/users``: a user's own profile, and administration of everyone's."""

from __future__ import annotations

import uuid
from typing import Any, cast

from flask import g
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema

from common.auth import has_role, login_required
from common.flask_db import get_session
from common.web import ServiceBlueprint, set_cursor
from user_app import administration, profiles
from user_app.access import ProfileState
from user_app.extensions import settings
from user_app.models import Profile
from user_app.resources.users.schemas import (
    AdminProfileUpdateSchema,
    ProfileSchema,
    ProfileUpdateSchema,
    UserQuerySchema,
)

blp = ServiceBlueprint("users", __name__, url_prefix="/api/v1/users", description="User profiles")

ADMIN = administration.ADMIN
# What a JSON schema cannot say about a profile change: its refusal is a documented 422.
AVATAR_REFUSED = "Invalid body, or an avatar_url that is not an absolute http(s) URL"
PROFILE_EXAMPLE = {
    "display_name": "Ada Lovelace",
    "bio": "Wrote the first program for the Analytical Engine.",
    "avatar_url": "https://example.com/ada.png",
}


def _own_profile(*, to_change: bool = False) -> ProfileState:
    # The token check has just read the caller's profile's row: a read answers
    # with it. A change loads the profile itself, and only a user whose sync
    # has not arrived yet needs it created here; only the creation commits.
    read: ProfileState | None = g.get("account_profile")
    if read is not None and not to_change:
        return read
    session = get_session()
    if read is not None:
        profile = profiles.get_profile(session, read.id)
        if profile is not None:
            return profile
    profile = profiles.ensure_profile(session, g.claims)
    if profile is None:  # deleted between the token check and now
        abort(401, message="Invalid token: account deleted")
    session.commit()
    return profile


def _profile_or_404(user_id: uuid.UUID, *, for_update: bool = False) -> Profile:
    session = get_session()
    profile = profiles.get_profile(session, str(user_id), for_update=for_update)
    if profile is None:
        abort(404, message="User not found")
    return profile


@blp.route("/me")
class Me(MethodView):
    @login_required
    @blp.response(200, ProfileSchema)
    def get(self) -> Any:
        """Your profile (created from your token if the registration sync has not arrived)."""
        return _own_profile()

    @login_required
    # Each field is optional, and so is the body: without one nothing changes.
    @blp.arguments(ProfileUpdateSchema, required=False, example=PROFILE_EXAMPLE)
    @blp.response(200, ProfileSchema)
    @blp.alt_response(422, schema=ErrorSchema, description=AVATAR_REFUSED)
    def patch(self, changes: dict) -> Any:
        """Change your display name, bio or avatar URL; ``null`` clears a field."""
        profile = cast(Profile, _own_profile(to_change=True))
        profiles.update_own_profile(profile, changes)
        get_session().commit()
        return profile


def _links_to_first_user() -> dict:
    # OpenAPI links: how a listed id feeds the operations on one user (clients and
    # stateful API testers follow them: list, then read, edit or delete, then read again).
    parameters = {"user_id": "$response.body#/0/id"}
    return {
        f"{method.capitalize()}FirstUser": {
            "operationRef": f"#/paths/~1api~1v1~1users~1{{user_id}}/{method}",
            "parameters": parameters,
        }
        for method in ("get", "patch", "delete")
    }


@blp.route("")
class Users(MethodView):
    @login_required(role=ADMIN)
    @blp.arguments(UserQuerySchema, location="query")
    @blp.response(200, ProfileSchema(many=True))
    @blp.doc(responses={200: {"links": _links_to_first_user()}})
    @blp.paginate(page_size=20, max_page_size=100)
    def get(self, query: dict, pagination_parameters: Any) -> Any:
        """List profiles, oldest first, optionally searched (``q``) and filtered (``is_active``).

        Page by number (``page``, with totals), or by cursor (``after``: the
        ``cursor`` of the previous page's X-Pagination, no totals, the same
        cost at any depth). Every page but the last carries a ``cursor``.
        """
        session = get_session()
        q, is_active = query.get("q"), query.get("is_active")
        size = pagination_parameters.page_size
        if "after" in query:
            page, more = administration.profiles_after(
                session, query["after"], q=q, is_active=is_active, limit=size
            )
        else:
            total, page = administration.search_profiles(
                session,
                q=q,
                is_active=is_active,
                offset=pagination_parameters.first_item,
                limit=size,
            )
            pagination_parameters.item_count = total
            more = pagination_parameters.first_item + len(page) < total
        cursor = administration.encode_cursor(page[-1]) if more and page else None
        set_cursor(pagination_parameters, cursor, keyset="after" in query)
        return page


# Only a UUID routes here (anything else is 404), so ``/me`` is never taken for an id:
# ``DELETE /me`` is a 405 whose ``Allow`` names what ``/me`` supports.
@blp.route("/<uuid:user_id>")
class User(MethodView):
    @login_required
    @blp.response(200, ProfileSchema)
    @blp.alt_response(403, description="Neither the user nor an administrator")
    @blp.alt_response(404, description="No such user")
    def get(self, user_id: uuid.UUID) -> Any:
        """One user's profile: your own, or anyone's for an administrator."""
        if g.claims["sub"] == str(user_id):
            return _own_profile()
        if not has_role(ADMIN):
            abort(403, message="You may only read your own profile")
        return _profile_or_404(user_id)

    @login_required(role=ADMIN)
    @blp.arguments(
        AdminProfileUpdateSchema, required=False, example={**PROFILE_EXAMPLE, "roles": ["user"]}
    )
    @blp.response(200, ProfileSchema)
    @blp.alt_response(404, description="No such user")
    @blp.alt_response(409, description="An administrator demoting or deactivating itself")
    @blp.alt_response(
        422, schema=ErrorSchema, description=AVATAR_REFUSED + ", or a role not among ROLES"
    )
    def patch(self, changes: dict, user_id: uuid.UUID) -> Any:
        """Change a profile; a change of ``is_active`` or ``roles`` is sent as ``user.updated``."""
        # Locked: the user worker may be applying a change of these same fields.
        profile = _profile_or_404(user_id, for_update=True)
        try:
            administration.update_profile(
                get_session(), profile, changes, by=g.claims["sub"], roles=settings().roles
            )
        except administration.UnknownRoles as error:
            message = f"Unknown role: {error}; roles are {', '.join(settings().roles)}"
            abort(422, message="Unknown role", errors={"json": {"roles": [message]}})
        except administration.SelfLockout:
            abort(409, message="Administrators cannot remove admin from or deactivate themselves")
        get_session().commit()
        return profile

    @login_required(role=ADMIN)
    @blp.response(204)
    @blp.alt_response(403, description="Administrators cannot delete themselves here")
    @blp.alt_response(404, description="No such user")
    def delete(self, user_id: uuid.UUID) -> None:
        """Delete a user everywhere: the profile here, the account at the auth service.

        An administrator cannot delete their own account through this endpoint,
        so the last administrator cannot lock everyone out by mistake; they use
        ``DELETE /api/v1/auth/me`` (which asks for their password) instead.
        """
        profile = _profile_or_404(user_id)
        if profile.id == g.claims["sub"]:
            abort(403, message="Use DELETE /api/v1/auth/me to delete your own account")
        administration.delete_profile(get_session(), profile)
        get_session().commit()
