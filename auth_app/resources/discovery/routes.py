"""``GET /.well-known/openid-configuration`` and ``/.well-known/oauth-authorization-server``.

What a resource server looks up to trust this service's tokens: the issuer to
expect, where the signing keys are, where to introspect. There is no
authorization endpoint (no browser flow), so the fields of one are left out.

Every URL is built from ``JWT_ISSUER``, never from the request's host: a
client could send any Host header, and the services build no URL from one
(README, behind reverse proxies). The well-known paths are served at the
service's root: an issuer with a path (``https://example.com/auth``) is
expected in front of a proxy that maps that path to the service's root, so
``<issuer>/.well-known/...`` reaches them, as OpenID Discovery looks them up.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from auth_app.extensions import settings
from auth_app.resources.discovery.schemas import DiscoverySchema
from auth_app.resources.jwks.routes import CACHE_CONTROL
from common.tokens import ALGORITHM
from common.web import ServiceBlueprint

blp = ServiceBlueprint(
    "discovery", __name__, url_prefix="/.well-known", description="Discovery metadata"
)


def metadata(issuer: str) -> dict[str, Any]:
    """The discovery document of a service whose tokens carry ``iss: issuer``."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/api/v1/auth/login",
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint": f"{base}/api/v1/auth/introspect",
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "subject_types_supported": ["public"],
        "service_documentation": f"{base}/docs",
    }


def _answer() -> Any:
    # Cacheable like the JWKS: it changes only with JWT_ISSUER, a redeploy.
    return metadata(settings().jwt_issuer), 200, {"Cache-Control": CACHE_CONTROL}


@blp.route("/openid-configuration")
class OpenIdConfiguration(MethodView):
    @blp.response(200, DiscoverySchema)
    def get(self) -> Any:
        """OpenID Connect Discovery: the issuer, its keys and its introspection endpoint."""
        return _answer()


@blp.route("/oauth-authorization-server")
class AuthorizationServerMetadata(MethodView):
    @blp.response(200, DiscoverySchema)
    def get(self) -> Any:
        """The same document, at RFC 8414's well-known path."""
        return _answer()
