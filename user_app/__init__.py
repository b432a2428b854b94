"""The user service: profiles kept in step with the auth service through RabbitMQ events."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from common.config import ConfigError, fail
from common.db import init_database
from common.logging import configure_logging
from common.web import create_api, health_blueprint
from user_app import users
from user_app.config import load_config
from user_app.models import Base
from user_app.security import init_auth


def create_app(config: dict | None = None) -> Flask:
    """Build the user service; ``config`` overrides the environment (tests).

    A configuration error ends the process with one line naming the variable.
    """
    app = Flask(__name__)
    try:
        app.config.update(load_config(config))
        configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
        # Reading a profile is the common request: no transaction around it.
        database = init_database(app, Base, autocommit_reads=True)
        init_auth(app)
    except ConfigError as error:
        fail(error)
    api = create_api(app)
    unavailable = (503, "The user database is unavailable, try again shortly")
    api.map_errors(app, {OperationalError: unavailable, InterfaceError: unavailable})

    def check_database():
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    api.register_blueprint(users.blp)
    api.register_blueprint(health_blueprint({"database": check_database}))
    return app
