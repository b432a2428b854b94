"""``/api/v1/auth/me/events`` and ``/api/v1/auth/events``: the security event log."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from auth_app import security_events
from auth_app.access import current_user
from auth_app.resources.events.schemas import (
    AdminSecurityEventSchema,
    EventQuerySchema,
    SecurityEventSchema,
)
from common.auth import login_required
from common.flask_db import get_session
from common.web import ServiceBlueprint

blp = ServiceBlueprint("events", __name__, url_prefix="/api/v1/auth", description="Security events")
ADMIN = "admin"


@blp.route("/me/events")
class MyEvents(MethodView):
    @login_required
    @blp.response(200, SecurityEventSchema(many=True))
    @blp.paginate(page_size=20, max_page_size=100)
    def get(self, pagination_parameters: Any) -> Any:
        """What happened to the caller's account, newest first (pagination in ``X-Pagination``)."""
        total, events = security_events.page(
            get_session(),
            user_id=current_user().id,
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return events


@blp.route("/events")
class Events(MethodView):
    @login_required(role=ADMIN)
    @blp.arguments(EventQuerySchema, location="query")
    @blp.response(200, AdminSecurityEventSchema(many=True))
    @blp.paginate(page_size=20, max_page_size=100)
    def get(self, query: dict, pagination_parameters: Any) -> Any:
        """Every account's events, newest first, by ``user_id`` and ``type`` if given."""
        total, events = security_events.page(
            get_session(),
            user_id=query.get("user_id"),
            event_type=query.get("type"),
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return events
