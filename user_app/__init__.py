"""The user service: profiles kept in step with the auth service through RabbitMQ events.

``create_app()`` builds the Flask app (gunicorn serves ``'user_app:create_app()'``);
nothing is created at import time. The web stack is imported by ``create_app``
alone, so the user worker can use the models and the sync without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the user service; ``config`` (tests) overrides settings by variable name.

    A configuration error ends the process with one line naming the variable.
    """
    from common.config import stop_on_config_error
    from common.web import service_app
    from user_app import extensions
    from user_app.config import UserSettings, load_settings
    from user_app.resources import register_resources

    with stop_on_config_error():
        app, api, settings = service_app(
            __name__, config, load_settings, UserSettings, title="User service"
        )
        extensions.init_app(app, api, settings)
        register_resources(api)
    return app
