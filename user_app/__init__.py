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
    from flask import Flask

    from common.config import split_overrides, stop_on_config_error
    from common.web import create_api
    from user_app import extensions
    from user_app.config import UserSettings, load_settings
    from user_app.resources import register_resources

    with stop_on_config_error():
        overrides, flask_config = split_overrides(config, UserSettings)
        settings = load_settings(overrides)
        app = Flask(__name__)
        app.config.update(flask_config)
        api = create_api(app, settings, title="User service")
        extensions.init_app(app, api, settings)
        register_resources(api)
    return app
