"""``/api/v1/auth/sessions``: where the user is signed in, and signing one of them out."""

from __future__ import annotations

import uuid
from typing import Any

from flask import g
from flask.views import MethodView
from flask_smorest import abort

from auth_app import login_sessions, tokens
from auth_app.access import current_user
from auth_app.extensions import token_issuer
from auth_app.resources.sessions.schemas import LoginSessionSchema
from auth_app.security_events import EventType, record
from common.auth import login_required
from common.db import utcnow
from common.flask_db import get_session
from common.web import ServiceBlueprint

blp = ServiceBlueprint(
    "sessions",
    __name__,
    url_prefix="/api/v1/auth/sessions",
    description="The signed-in user's login sessions",
)


@blp.route("")
class Sessions(MethodView):
    @login_required
    @blp.response(200, LoginSessionSchema(many=True))
    def get(self) -> Any:
        """The user's live sessions, newest first; ``current`` marks the caller's own.

        Each started with a login (from ``ip`` with ``user_agent``) and lives
        while it is refreshed, at most ``SESSION_MAX_AGE_DAYS``.
        """
        sid = g.claims.get("sid")
        live = login_sessions.live(get_session(), current_user().id, utcnow())
        return [
            {
                "id": family.id,
                "created_at": family.created_at,
                "last_used_at": family.last_used_at or family.created_at,
                "expires_at": until,
                "ip": family.ip,
                "user_agent": family.user_agent,
                "current": family.id == sid,
            }
            for family, until in live
        ]


# Only a UUID routes here: anything else is a 404 like a session of someone else.
@blp.route("/<uuid:session_id>")
class SessionById(MethodView):
    @login_required
    @blp.response(204)
    @blp.alt_response(404, description="Not one of the caller's live sessions")
    def delete(self, session_id: uuid.UUID) -> None:
        """End one session, as a logout of it: its tokens die here at once, and at the
        user service once it hears of it. Ending the caller's own session is a logout.
        """
        session = get_session()
        user = current_user()
        sid = str(session_id)
        if not tokens.end_session_of(session, token_issuer(), user, sid):
            abort(404, message="No such session")
        record(session, EventType.SESSION_REVOKED, user.id, session_id=sid)
        session.commit()
