"""The public keys that verify this service's access tokens (RFC 7517)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from auth_app.components import components
from auth_app.resources.schemas import JwksSchema

blp = Blueprint("jwks", __name__, url_prefix="/.well-known", description="Signing keys")

# Verifiers may keep the set five minutes; one that meets an unknown kid after a
# rotation fetches it again, so caching never delays a rotation for long.
CACHE_CONTROL = "public, max-age=300"


@blp.route("/jwks.json")
class Jwks(MethodView):
    @blp.response(200, JwksSchema)
    def get(self):
        """Every key whose tokens may still be alive; ``kid`` is the RFC 7638 thumbprint."""
        return components().issuer.keys.jwks(), 200, {"Cache-Control": CACHE_CONTROL}
