"""``/docs``: Swagger UI from the service's own assets, under a Content-Security-Policy.

flask-smorest's page starts Swagger UI with an inline script, which a policy
worth having forbids. This page loads the same bundled assets and starts the
UI from ``/docs/swagger-init.js``, a script the service serves itself, so the
policy allows scripts, styles and requests from this origin alone: a script
injected into the page (through a description in the document, say) does not
run, and nothing the page holds can be sent anywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, url_for
from markupsafe import escape

DOCS_PATH = "/docs"
INIT_PATH = "/docs/swagger-init.js"

#: Only what the page needs, all of it from this origin.
DOCS_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # swagger-ui.css draws its icons as data: URIs inside the stylesheet itself.
        "img-src 'self' data:",
        # The OpenAPI document, and "Try it out" requests to this service.
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{init}"></script>
</body>
</html>
"""

_INIT = """window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({config});
}});
"""


def install_docs(
    app: Flask,
    *,
    title: str,
    spec_url: str,
    assets: str,
    ui_config: Mapping[str, Any] | None = None,
) -> None:
    """Serve the Swagger UI page at ``/docs`` and its start script, the page under DOCS_POLICY.

    ``assets`` is where the Swagger UI bundle is served (this origin), and
    ``ui_config`` extra Swagger UI options (``OPENAPI_SWAGGER_UI_CONFIG``).
    """
    config = {
        "url": spec_url,
        "dom_id": "#swagger-ui",
        # Swagger UI would otherwise send the document to an online validator.
        "validatorUrl": None,
        **(ui_config or {}),
    }
    script = _INIT.format(config=json.dumps(config, indent=2))

    def swagger_ui() -> Response:
        page = _PAGE.format(title=escape(title), assets=assets, init=url_for("swagger_init"))
        response = Response(page, mimetype="text/html")
        response.headers["Content-Security-Policy"] = DOCS_POLICY
        return response

    def swagger_init() -> Response:
        return Response(script, mimetype="text/javascript")

    app.add_url_rule(DOCS_PATH, "swagger_ui", swagger_ui)
    app.add_url_rule(INIT_PATH, "swagger_init", swagger_init)
