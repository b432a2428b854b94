"""A web app's metrics: every request counted and timed, and ``GET /metrics``.

:func:`install_metrics` gives the app its recorder (``app.extensions["metrics"]``,
one of :mod:`common.metrics`' recorders) and, when ``METRICS_ENABLED``, an
``after_request`` hook that records each answer by its route's rule, method
and status, and the ``/metrics`` endpoint. Disabled, the recorder records
nothing and ``/metrics`` is a 404 like any unknown path.
"""

from __future__ import annotations

import time
from typing import cast

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView

from common.metrics import CONTENT_TYPE, WebRecorder, exposition
from common.web import ServiceApi, ServiceBlueprint

METRICS_DOCUMENTATION = {
    "200": {
        "description": (
            "Prometheus text exposition (format 0.0.4) of this service: every gunicorn "
            "worker's values summed"
        ),
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def install_metrics(app: Flask, api: ServiceApi, recorder: WebRecorder) -> None:
    """Record every request of ``app`` with ``recorder`` and serve ``/metrics``, when enabled."""
    app.extensions["metrics"] = recorder
    if not recorder.enabled:
        return

    @app.after_request
    def _record(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            rule = request.url_rule
            recorder.request(
                rule.rule if rule is not None else None,
                request.method,
                response.status_code,
                time.perf_counter() - started,
            )
        return response

    api.register_blueprint(metrics_blueprint())


def metrics_blueprint() -> ServiceBlueprint:
    """``GET /metrics``, documented as the text it answers."""
    blp = ServiceBlueprint("metrics", __name__, description="Prometheus metrics")

    @blp.route("/metrics")
    class Metrics(MethodView):
        @blp.doc(responses=METRICS_DOCUMENTATION)
        def get(self) -> Response:
            """This service's metrics, for Prometheus to scrape."""
            return Response(exposition(), mimetype=None, content_type=CONTENT_TYPE)

    return blp


def recorder() -> WebRecorder:
    """The current app's recorder."""
    return cast(WebRecorder, current_app.extensions["metrics"])
