"""The auth service: accounts, RS256 access tokens, rotating refresh tokens.

``create_app()`` builds the Flask app (gunicorn serves ``'auth_app:create_app()'``);
nothing is created at import time. The web stack is imported by ``create_app``
alone, so the workers can use the auth service's models and use cases without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the auth service; ``config`` (tests) overrides settings by variable name.

    A configuration error ends the process with one line naming the variable.
    """
    from auth_app import cli, extensions
    from auth_app.config import AuthSettings, load_settings
    from auth_app.resources import register_resources
    from common.config import stop_on_config_error
    from common.web import service_app

    with stop_on_config_error():
        app, api, settings = service_app(
            __name__, config, load_settings, AuthSettings, title="Auth service"
        )
        extensions.init_app(app, api, settings)
        register_resources(api, settings)
        cli.init_app(app)
    return app
